"""The restructured step: same loss and gradients as the plain restatement; batched augmentation
matches kornia's formulas; the CUDA switches (skipped without a GPU)."""

from __future__ import annotations

import math

import kornia.color
import kornia.enhance as KE
import numpy as np
import pytest
import torch

from mudjack.augment import (
    ViewAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    grayscale,
)
from mudjack.bugs import Bug
from mudjack.device import autocast, to_device
from mudjack.encoders import get_adapter, trainable_parameters
from mudjack.patching.mudjacking import MudjackingParams, start_run
from mudjack.patching.speed import FoldedConv, fold_frozen_batchnorm
from mudjack.triggers import patch_trigger
from tests.helpers import run_if
from tests.helpers.reference_mudjacking import ReferenceViews, plain_loss, plain_models, reference_loader
from tests.helpers.tiny import SMALL_CNN

ADAPTERS = {
    "small_cnn": (SMALL_CNN, (2, 6, 6)),
    "resnet_cifar": ({"depth": 20}, (10, 21, 21)),
}


def random_batchnorm(encoder: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine parameters (a fresh layer's are 0, 1, 1, 0)."""
    with torch.no_grad():
        for layer in encoder.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.normal_(0, 0.3)
                layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.normal_(0, 0.3)


def problem(name: str, images: int, bugs: int, seed: int = 0):
    """A random encoder, random shadow images and `bugs` bugs with patch triggers."""
    config, (size, row, col) = ADAPTERS[name]
    adapter = get_adapter(name, config)
    torch.manual_seed(seed)
    encoder = adapter.build().eval()
    random_batchnorm(encoder)
    rng = np.random.default_rng(seed)
    shape = adapter.input_shape
    shadow = rng.integers(0, 256, (images, *shape), dtype=np.uint8)
    made = []
    for i in range(bugs):
        trigger = patch_trigger(shape, size, row - i, col - i, value=255 - 40 * i)
        bug, ref = rng.integers(0, 256, (2, *shape), dtype=np.uint8)
        made.append(Bug(f"b{i}", "t", 1, 0, bug, ref, trigger))
    return encoder, adapter, shadow, made


def reference_views(run) -> tuple[torch.Tensor, ...]:
    """The plain restatement's five full-batch views of the run's shadow images, unaugmented."""
    bugs = run.bug_views
    dataset = ReferenceViews(run.pixels, bugs.bug, bugs.reference, bugs.masks, bugs.patterns, None)
    items = [dataset[i] for i in range(len(dataset))]
    return tuple(torch.stack(view) for view in zip(*items, strict=True))


@pytest.mark.parametrize(("name", "bugs"), [("small_cnn", 1), ("small_cnn", 2), ("resnet_cifar", 1)])
def test_the_step_has_the_loss_and_gradients_of_the_plain_restatement(name, bugs):
    """Augmentation off, K = batch: one concatenated pass of h' (channels_last) and one of h
    give what 5 + 2 full-batch passes give, to float tolerance."""
    batch = 4
    encoder, adapter, shadow, made = problem(name, batch, bugs)
    params = MudjackingParams(device="cpu", batch_size=batch, views=batch, augment=False,
                              lr=1e-30, momentum=0.0, weight_decay=0.0)
    run = start_run(encoder, adapter, shadow, made, params, seed=0)
    terms = run.step(torch.arange(batch))  # lr ~0: the weights stay, the gradients are kept
    ours = [p.grad for p in trainable_parameters(run.patched)]

    patched, frozen = plain_models(encoder)
    plain = plain_loss(patched, frozen, reference_views(run), lambda_gen=params.lambda_gen,
                       lambda_eff=params.lambda_eff, generality=params.generality,
                       distance=params.generality_distance)
    wanted = torch.autograd.grad(plain["loss"], list(trainable_parameters(patched)))
    for key, value in plain.items():
        assert terms[key] == pytest.approx(float(value.detach()), abs=1e-5), key
    assert len(ours) == len(wanted)
    for got, want in zip(ours, wanted, strict=True):
        torch.testing.assert_close(got.contiguous(), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["small_cnn", "resnet_cifar"])
def test_folded_batchnorm_shares_the_weights_and_gives_the_same_gradients(name):
    encoder, *_ = problem(name, 1, 1)
    patched, _ = plain_models(encoder)
    folded = fold_frozen_batchnorm(patched)
    convs = [m for m in patched.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sum(isinstance(m, FoldedConv) for m in folded.modules()) == len(convs)
    assert {id(p) for p in folded.parameters()} == {id(p) for p in patched.parameters()}
    x = torch.rand(3, 3, *adapter_size(name))
    (unfolded_grad,) = torch.autograd.grad(patched(x).square().sum(), [convs[0].weight])
    (folded_grad,) = torch.autograd.grad(folded(x).square().sum(), [convs[0].weight])
    torch.testing.assert_close(folded(x), patched(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded_grad, unfolded_grad, atol=1e-5, rtol=1e-4)


def test_an_encoder_fx_cannot_trace_runs_unfolded():
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    module = DataDependent()
    assert fold_frozen_batchnorm(module) is module


def adapter_size(name: str) -> tuple[int, int]:
    return tuple(ADAPTERS[name][0].get("input_shape", [32, 32])[:2])


def test_the_reference_loader_augments_each_copy_on_its_own():
    encoder, adapter, shadow, made = problem("small_cnn", 6, 1)
    run = start_run(encoder, adapter, shadow, made, MudjackingParams(device="cpu"), seed=0)
    bugs = run.bug_views
    dataset = ReferenceViews(run.pixels, bugs.bug, bugs.reference, bugs.masks, bugs.patterns,
                             ViewAugmentation(flip=0.5, jitter_p=1.0))
    x, x_t, bug, ref, ref_t = next(iter(reference_loader(dataset, batch_size=6, seed=0)))
    assert x.shape == bug.shape == (6, 3, 8, 8)
    assert not torch.allclose(bug[0], bug[1])  # copies of one bug, augmented apart
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_batched_colour_steps_match_kornia():
    torch.manual_seed(0)
    x = torch.rand(32, 3, 12, 12)
    x[0] = 0.5  # grey: hue undefined
    x[1, :, :3] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # ties at the maximum
    factor = 0.6 + 0.8 * torch.rand(32)
    shift = 0.2 * torch.rand(32) - 0.1
    f4, s4 = factor.view(-1, 1, 1, 1), shift.view(-1, 1, 1, 1)
    close = {"atol": 2e-6, "rtol": 0}
    torch.testing.assert_close(adjust_brightness(x, f4), KE.adjust_brightness_accumulative(x, factor),
                               **close)
    torch.testing.assert_close(adjust_contrast(x, f4), KE.adjust_contrast_with_mean_subtraction(x, factor),
                               **close)
    torch.testing.assert_close(adjust_saturation(x, f4),
                               KE.adjust_saturation_with_gray_subtraction(x, factor), **close)
    torch.testing.assert_close(adjust_hue(x, s4), KE.adjust_hue(x, shift * 2 * math.pi), atol=1e-5, rtol=0)
    torch.testing.assert_close(grayscale(x), kornia.color.rgb_to_grayscale(x), **close)


def test_each_view_draws_its_own_augmentation():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8).expand(2000, 3, 8, 8).contiguous()
    out = ViewAugmentation()(x)
    grey = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    untouched = torch.isclose(out, x, atol=1e-6).flatten(1).all(1)
    assert 0.15 < float(grey.float().mean()) < 0.25  # grayscale p=0.2
    assert 0.05 < float(untouched.float().mean()) < 0.16  # no flip, no jitter, no grey: 0.5·0.2·0.8
    assert len(torch.unique(out.flatten(1), dim=0)) > 1500  # every jittered view (80 %) differs
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_identity_settings_leave_the_views_alone():
    x = torch.rand(16, 3, 8, 8)
    same = ViewAugmentation(flip=0.0, jitter_p=0.0, grayscale_p=0.0)(x)
    torch.testing.assert_close(same, x, atol=1e-6, rtol=0)
    mirrored = ViewAugmentation(flip=1.0, jitter_p=0.0, grayscale_p=0.0)(x)
    torch.testing.assert_close(mirrored, x.flip(3), atol=1e-6, rtol=0)


@pytest.mark.slow  # inductor compiles a forward and a backward graph: a minute or more on 2 busy cores
def test_compiled_step_gives_the_eager_loss():
    encoder, adapter, shadow, made = problem("small_cnn", 8, 1)
    losses = []
    for compile_models in (False, True):
        params = MudjackingParams(device="cpu", batch_size=8, views=2, augment=False,
                                  compile=compile_models)
        run = start_run(encoder, adapter, shadow, made, params, seed=0)
        losses.append([run.step(torch.arange(8))["loss"] for _ in range(3)])
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)


# --------------------------------------------------------------------------- bf16 on the CPU


def test_cpu_autocast_is_off_unless_asked_for():
    conv = torch.nn.Conv2d(3, 4, 3)
    with autocast(torch.device("cpu")):
        assert conv(torch.rand(2, 3, 8, 8)).dtype == torch.float32


@run_if(cpu_bf16=True)
def test_a_cpu_bf16_step_runs_convolutions_in_bf16_and_tracks_the_fp32_loss():
    with autocast(torch.device("cpu"), cpu_bf16=True):
        assert torch.nn.Conv2d(3, 4, 3)(torch.rand(2, 3, 8, 8)).dtype == torch.bfloat16
    encoder, adapter, shadow, made = problem("resnet_cifar", 8, 1)
    losses = {}
    for bf16 in (False, True):
        params = MudjackingParams(device="cpu", batch_size=8, views=4, augment=False, cpu_bf16=bf16)
        run = start_run(encoder, adapter, shadow, made, params, seed=0)
        losses[bf16] = [run.step(torch.arange(8))["loss"] for _ in range(2)]
        weight = next(p for p in run.patched.parameters() if p.requires_grad)
        assert weight.dtype == torch.float32  # autocast: fp32 master weights, bf16 compute
    assert losses[True] == pytest.approx(losses[False], abs=0.05)
    assert losses[True] != losses[False]  # bf16 did run


# --------------------------------------------------------------------------- CUDA (skipped here)


@run_if(gpu=True)
def test_cuda_autocast_runs_convolutions_in_bf16():
    device = torch.device("cuda")
    conv = torch.nn.Conv2d(3, 4, 3).to(device)
    with autocast(device):
        out = conv(torch.rand(2, 3, 8, 8, device=device))
    assert out.dtype == torch.bfloat16


@run_if(gpu=True)
def test_cuda_copies_are_pinned_and_non_blocking():
    host = torch.rand(4, 3, 8, 8)
    moved = to_device(host, torch.device("cuda"))
    torch.cuda.synchronize()
    assert moved.is_cuda and torch.equal(moved.cpu(), host)


@run_if(gpu=True)
def test_a_cuda_step_uses_channels_last_and_bf16_and_tracks_the_cpu_loss():
    encoder, adapter, shadow, made = problem("resnet_cifar", 8, 1)
    losses = {}
    for device in ("cpu", "cuda"):
        params = MudjackingParams(device=device, batch_size=8, views=4, augment=False)
        run = start_run(encoder, adapter, shadow, made, params, seed=0)
        losses[device] = run.step(torch.arange(8))["loss"]
        conv = next(m for m in run.patched.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(losses["cuda"])
    assert losses["cuda"] == pytest.approx(losses["cpu"], abs=0.05)  # bf16 against fp32
