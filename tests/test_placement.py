"""Intake and retrain on a GPU: an encoder's network placed on a device (mudjack.device.Placed,
mudjack.features.placed) while their own tensors stay on the CPU. On a CPU-only machine the
placement is exercised with the CPU as its device; the CUDA tests skip without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mudjack.attacks import BadEncoderParams, badencoder
from mudjack.config import ParamsError
from mudjack.deployed import Deployed
from mudjack.device import Placed
from mudjack.features import cosine, extract_features, is_placed, on_device, placed
from mudjack.intake import Intake, IntakeParams, intake_report
from mudjack.reports import BugReport
from mudjack.triggers import stamp
from tests.helpers import run_if

CPU = torch.device("cpu")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.LazyLinear(5))


def test_a_placed_module_gives_the_same_outputs_and_input_gradients():
    net = _net()
    inputs = torch.rand(2, 3, 6, 6, requires_grad=True)
    plain = net(inputs)
    (plain_grad,) = torch.autograd.grad(plain.square().sum(), inputs)
    moved = Placed(net, CPU)(inputs)
    (moved_grad,) = torch.autograd.grad(moved.square().sum(), inputs)
    assert torch.equal(plain, moved) and torch.equal(plain_grad, moved_grad)


def test_a_placed_module_stays_as_it_is_through_conversions():
    wrapper = Placed(torch.nn.Linear(3, 2), CPU)
    assert wrapper.to(torch.float64) is wrapper and wrapper.double() is wrapper
    assert wrapper.module.weight.dtype == torch.float32  # extract_features' `.to` cannot move it


def _untimed(decision) -> dict:
    return {k: v for k, v in decision.to_record().items() if k not in ("phase_seconds", "seconds")}


def _genuine_report(scenario, deployed) -> BugReport:
    test = scenario.task.test
    predicted = deployed.classify("digits", stamp(test.x, scenario.trigger))
    index = int(np.flatnonzero((test.y != scenario.target) & (predicted == scenario.target))[0])
    return BugReport("r", "digits", int(test.y[index]), stamp(test.x[index], scenario.trigger), None)


def test_intake_on_a_placed_encoder_decides_as_on_the_deployed_one(scenario, deployed):
    folded = deployed.for_inference(CPU)
    assert not is_placed(folded.encoder)  # on the CPU nothing is placed
    moved = Deployed(placed(folded.encoder, CPU), deployed.adapter, deployed.heads)
    assert is_placed(moved.encoder) and moved.for_inference(CPU) is moved  # prepared once
    report, tasks = _genuine_report(scenario, deployed), {"digits": scenario.task}
    plain, _ = intake_report(report, deployed, tasks, params=IntakeParams(), seed=1)
    on_device, _ = intake_report(report, moved, tasks, params=IntakeParams(), seed=1)
    assert plain.accepted, plain.reasons
    assert _untimed(on_device) == _untimed(plain)  # every candidate, null and z the same


def test_a_placed_copy_leaves_the_deployed_encoder_alone(scenario, deployed):
    before = {name: value.clone() for name, value in deployed.encoder.state_dict().items()}
    moved = placed(deployed.encoder, CPU)
    assert moved.backbone.module is not deployed.encoder.backbone
    assert not any(p.requires_grad for p in moved.parameters())
    assert all(torch.equal(before[k], v) for k, v in deployed.encoder.state_dict().items())


def test_a_placed_text_encoder_gives_the_same_features(tiny_bert):
    from mudjack.encoders import get_adapter

    adapter = get_adapter("hf_text", {"folder": str(tiny_bert), "max_length": 32})
    encoder = adapter.load_pretrained()
    sentences = np.array(["a film", "the plot is thin and the film long", "good"])
    moved = placed(encoder, CPU)
    assert isinstance(moved, Placed)
    assert torch.allclose(extract_features(moved, adapter, sentences),
                          extract_features(encoder, adapter, sentences), atol=1e-6)


def test_on_the_cpu_an_encoder_is_used_as_it_is(deployed):
    assert on_device(deployed.encoder, CPU) is deployed.encoder


def test_intake_refuses_a_device_it_does_not_have_or_know(scenario, deployed):
    from stages.config import RetrainParams

    for section in (IntakeParams, RetrainParams):
        with pytest.raises(ValidationError, match="device"):
            section(device="tpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: asking for it is not an error here")
    with pytest.raises(ParamsError, match="CUDA"):
        Intake(deployed, {"digits": scenario.task}, params=IntakeParams(device="cuda"))


@run_if(gpu=True)
def test_intake_on_cuda_takes_the_decision_it_takes_on_the_cpu(scenario, deployed):
    report, tasks = _genuine_report(scenario, deployed), {"digits": scenario.task}
    decisions = {device: intake_report(report, deployed, tasks, params=IntakeParams(device=device), seed=1)[0]
                 for device in ("cpu", "cuda")}
    assert decisions["cuda"].accepted and decisions["cpu"].accepted
    reversal = [d.numbers["reversal"]["chosen"] for d in decisions.values()]
    assert reversal[0] == reversal[1]
    assert is_placed(deployed.for_inference(torch.device("cuda")).encoder)


@run_if(gpu=True)
def test_features_on_cuda_match_the_cpu_ones(scenario):
    encoder, adapter, rows = scenario.backdoored, scenario.adapter, scenario.task.test.x[:64]
    on_gpu = on_device(encoder, torch.device("cuda"))
    assert on_gpu is not encoder and is_placed(on_gpu)
    assert torch.allclose(extract_features(on_gpu, adapter, rows), extract_features(encoder, adapter, rows),
                          atol=1e-3)


def _weights(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in encoder.state_dict().items()}


def test_badencoder_on_the_cpu_by_name_plants_what_it_plants_by_default(scenario) -> None:
    clean, before = scenario.clean, _weights(scenario.clean)
    reference = scenario.task.train.x[0]
    planted = [badencoder(clean, scenario.adapter, scenario.shadow[:128], scenario.trigger, reference,
                          BadEncoderParams(epochs=1), seed=3, device=device)
               for device in (None, torch.device("cpu"))]
    for name, value in _weights(planted[0]).items():
        assert torch.equal(value, planted[1].state_dict()[name]), name
    assert all(torch.equal(value, clean.state_dict()[name]) for name, value in before.items())


@run_if(gpu=True)
def test_badencoder_on_cuda_returns_a_cpu_encoder_close_to_the_cpu_one(scenario) -> None:
    reference = scenario.task.train.x[0]
    planted = {device: badencoder(scenario.clean, scenario.adapter, scenario.shadow[:256], scenario.trigger,
                                  reference, BadEncoderParams(epochs=2), device=torch.device(device))
               for device in ("cpu", "cuda")}
    assert all(value.device.type == "cpu" for value in planted["cuda"].state_dict().values())
    assert all(value.device.type == "cpu" for value in scenario.clean.state_dict().values())
    stamped = stamp(scenario.task.test.x[:64], scenario.trigger)
    features = [extract_features(planted[d], scenario.adapter, stamped) for d in ("cpu", "cuda")]
    assert cosine(*features).min() > 0.99  # float rounding apart, the same plant


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_attack_stage_plants_where_attack_device_says(scenario) -> None:
    """A device this machine lacks is refused by name before any training: the stage reads it."""
    from stages.attack import plant
    from stages.config import PipelineParams

    paths = {"shadow": "s.npz", "tasks": "t", "encoder": "e.safetensors", "heads": "h", "inbox": "i",
             "truth": "truth.npz"}
    params = PipelineParams(paths=paths, attack={"target": 0, "trigger": {"size": 2}, "device": "cuda:0"})
    with pytest.raises(ParamsError, match="device 'cuda:0' requested, but this machine has 0 CUDA"):
        plant(params, scenario.clean, scenario.adapter, scenario.shadow, scenario.task)


@run_if(gpu=True)
def test_reinjection_on_cuda_reads_asr_there_and_leaves_its_encoder_on_the_cpu(scenario) -> None:
    from mudjack.metrics import non_target
    from mudjack.sequela import Backdoor, reinjection

    check = scenario.task.test.x[non_target(scenario.task.test.y, 0)][:100]
    backdoor = Backdoor(scenario.trigger, scenario.task.train.x[0], 0)
    result = reinjection(scenario.clean, scenario.adapter, scenario.head, backdoor,  # goal > 1: to the cap
                         shadow=scenario.shadow[:128], check=check, attack=BadEncoderParams(), goal=1.01,
                         max_steps=10, check_every=5, seed=0, device=torch.device("cuda"))
    assert [step for step, _ in result["curve"]] == [0, 5, 10] and not result["reached"]
    assert all(value.device.type == "cpu" for value in scenario.clean.state_dict().values())
