"""The method as a specification: intake reproduces and reverses, Mudjacking repairs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mudjack.bugs import load_bugs, save_bug
from mudjack.evaluation import AttackSpec, retrain_and_evaluate
from mudjack.features import chord, cosine
from mudjack.heads import HeadParams
from mudjack.intake import IntakeParams, intake_report
from mudjack.intake.occlusion import two_means_mask
from mudjack.patching import PatchInputs, run_patch
from mudjack.patching.mudjacking import MudjackingParams, loss_terms, mudjacking_loss
from mudjack.reports import BugReport
from mudjack.triggers import stamp
from tests.helpers.reference_mudjacking import plain_loss

HEAD = HeadParams(epochs=60)


def make_report(scenario, index: int, triggered: bool, label: int | None = None) -> BugReport:
    image = scenario.task.test.x[index]
    if triggered:
        image = stamp(image, scenario.trigger)
    true = int(scenario.task.test.y[index]) if label is None else label
    return BugReport(f"r{index}", "digits", true, image, path=None)


def genuine_index(scenario, deployed) -> int:
    test = scenario.task.test
    stamped = stamp(test.x, scenario.trigger)
    predicted = deployed.classify("digits", stamped)
    return int(np.flatnonzero((test.y != scenario.target) & (predicted == scenario.target))[0])


@pytest.fixture(scope="module")
def accepted_bug(scenario, deployed):
    report = make_report(scenario, genuine_index(scenario, deployed), triggered=True)
    decision, bug = intake_report(report, deployed, {"digits": scenario.task}, params=IntakeParams(),
                                  truth=scenario.trigger)
    assert decision.accepted, decision.reasons
    return decision, bug


def test_intake_reproduces_a_genuine_report_and_recovers_the_trigger(accepted_bug, scenario):
    decision, bug = accepted_bug
    assert decision.numbers["predicted"] == scenario.target
    assert decision.numbers["iou"] >= 0.5
    assert not np.array_equal(bug.reference, bug.bug)
    assert bug.reference.shape == bug.bug.shape


def test_intake_runs_a_copy_with_batchnorms_folded_and_never_the_deployed_encoder(scenario, deployed):
    report = make_report(scenario, genuine_index(scenario, deployed), triggered=True)
    calls = []
    hooks = [layer.register_forward_hook(lambda *_: calls.append(1))
             for layer in deployed.encoder.modules() if isinstance(layer, torch.nn.BatchNorm2d)]
    assert hooks  # small_cnn has BatchNorms to fold
    try:
        decision, _ = intake_report(report, deployed, {"digits": scenario.task}, params=IntakeParams())
    finally:
        for hook in hooks:
            hook.remove()
    assert decision.accepted, decision.reasons
    assert not calls


def test_intake_rejects_a_report_that_does_not_reproduce(scenario, deployed):
    clean_pred = deployed.classify("digits", scenario.task.test.x)
    index = int(np.flatnonzero(clean_pred == scenario.task.test.y)[0])
    decision, bug = intake_report(make_report(scenario, index, triggered=False), deployed,
                                  {"digits": scenario.task}, params=IntakeParams())
    assert not decision.accepted and bug is None
    assert "does not reproduce" in decision.reasons[0]


@pytest.mark.parametrize(("task", "label", "reason"), [
    ("nope", 1, "unknown task"), ("digits", 42, "not a class")])
def test_intake_rejects_reports_it_cannot_place(scenario, deployed, task, label, reason):
    report = make_report(scenario, 0, triggered=True, label=label)
    report.task = task
    decision, _ = intake_report(report, deployed, {"digits": scenario.task}, params=IntakeParams())
    assert not decision.accepted and reason in decision.reasons[0]


def test_two_means_takes_the_minority_cluster():
    scores = np.zeros((8, 8))
    scores[6:, 6:] = 1.0
    scores += np.random.default_rng(0).normal(0, 0.01, scores.shape)
    assert (two_means_mask(scores) == (scores > 0.5)).all()


def test_bug_registry_round_trip(tmp_path, accepted_bug):
    _, bug = accepted_bug
    save_bug(bug, tmp_path)
    (loaded,) = load_bugs(tmp_path)
    assert loaded.id == bug.id and (loaded.trigger.mask == bug.trigger.mask).all()
    assert (loaded.bug == bug.bug).all() and loaded.record["iou"] == bug.record["iou"]


@pytest.fixture(scope="module")
def patched(scenario, accepted_bug):
    params = MudjackingParams(epochs=10, views=8).model_dump()
    inputs = PatchInputs(scenario.backdoored, scenario.adapter, scenario.shadow, [accepted_bug[1]])
    return run_patch("mudjacking", inputs, params, seed=0)


def test_mudjacking_from_one_report_removes_the_backdoor(scenario, patched):
    attack = AttackSpec(scenario.trigger, scenario.target, "truth")
    _, before = retrain_and_evaluate(scenario.backdoored, scenario.adapter, scenario.task, attack, HEAD)
    _, after = retrain_and_evaluate(patched.encoder, scenario.adapter, scenario.task, attack, HEAD)
    assert before["asr"] >= 0.8
    assert after["asr"] <= 0.2
    assert after["clean_acc"] >= before["clean_acc"] - 0.08  # tiny encoder: noisier than the default
    assert after["tba"] > before["tba"] + 0.3
    # the target class's own inputs keep their class with the trigger (an anti-trigger would not)
    assert before["target_tba"] >= 0.9 and after["target_tba"] >= 0.8


def test_mudjacking_logs_every_epoch_and_never_moves_batchnorm(scenario, patched):
    assert [row["epoch"] for row in patched.log] == list(range(1, 11))
    assert set(patched.log[0]) == {"epoch", "loss", "locality", "generalisability", "effectiveness"}
    before, after = scenario.backdoored.state_dict(), patched.encoder.state_dict()
    batchnorm = [n for n, m in patched.encoder.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorm
    for layer in batchnorm:
        for key in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(before[f"{layer}.{key}"], after[f"{layer}.{key}"]), layer
    conv = "backbone.0.weight"
    assert not torch.equal(before[conv], after[conv])


def test_mudjacking_refuses_an_empty_bug_list(scenario):
    with pytest.raises(ValueError, match="at least one"):
        run_patch("mudjacking", PatchInputs(scenario.backdoored, scenario.adapter, scenario.shadow, []), {})


@pytest.mark.parametrize(("generality", "distance"),
                         [("patched", "cosine"), ("frozen", "cosine"), ("frozen", "chord")])
def test_loss_gradients_flow_through_both_sides(scenario, generality, distance):
    """The batched loss equals the plain restatement of METHOD.md, gradients included."""
    torch.manual_seed(0)
    patched = copy.deepcopy(scenario.backdoored).eval()
    frozen = scenario.backdoored.eval()
    batch, per_bug = 4, 3
    views = torch.rand(2 * batch + 3 * per_bug, 3, 8, 8)
    settings = MudjackingParams(lambda_gen=0.25, lambda_eff=2.0,  # unequal: each weight is read
                                generality=generality, generality_distance=distance)
    terms = mudjacking_loss(patched, frozen, views, batch=batch, per_bug=per_bug, params=settings)
    weights = [p for p in patched.parameters() if p.requires_grad]
    grads = torch.autograd.grad(terms["loss"], weights)

    split = tuple(views.split([batch, batch, per_bug, per_bug, per_bug]))
    plain = plain_loss(patched, frozen, split, lambda_gen=settings.lambda_gen,
                       lambda_eff=settings.lambda_eff, generality=settings.generality,
                       distance=distance)["loss"]
    plain_grads = torch.autograd.grad(plain, weights)
    assert float(terms["loss"]) == pytest.approx(float(plain), abs=1e-5)
    for got, want in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("distance", ["cosine", "chord"])
@pytest.mark.parametrize("generality", ["patched", "frozen"])
def test_generality_pulls_stamped_views_to_the_chosen_anchor(generality, distance):
    """patched (the paper's): x⊕t and x are pulled together, both moving; frozen: x⊕t is pulled
    to the backdoored encoder's h(x), and the clean views get no gradient from the term."""
    batch, per_bug, dim = 3, 2, 5
    torch.manual_seed(0)
    out = torch.randn(2 * batch + 3 * per_bug, dim, requires_grad=True)
    frozen_out = torch.randn(batch + per_bug, dim)
    terms = loss_terms(out, frozen_out, batch=batch, per_bug=per_bug,
                       params=MudjackingParams(generality=generality, generality_distance=distance))
    (grad,) = torch.autograd.grad(terms["generalisability"], out)
    x, x_t = out[:batch], out[batch:2 * batch]
    x_r, x_r_t = out[2 * batch + per_bug:2 * batch + 2 * per_bug], out[2 * batch + 2 * per_bug:]
    anchor, anchor_r = (frozen_out[:batch], frozen_out[batch:]) if generality == "frozen" else (x, x_r)
    apart = chord if distance == "chord" else (lambda a, b: -cosine(a, b))
    want = apart(x_t, anchor).mean() + apart(x_r_t, anchor_r).mean()
    assert float(terms["generalisability"]) == pytest.approx(float(want), abs=1e-6)
    clean_rows = torch.cat([grad[:batch], grad[2 * batch + per_bug:2 * batch + 2 * per_bug]])
    assert bool(clean_rows.abs().sum() == 0) == (generality == "frozen")
    assert grad[batch:2 * batch].abs().sum() > 0 and grad[2 * batch + 2 * per_bug:].abs().sum() > 0


def test_chord_distance_keeps_pulling_stamped_views_that_near_their_anchors():
    """-cos pulls with a force that fades as x⊕t reaches h(x); the chord distance keeps its
    pull, and its value is the distance of the normalised rows. L_loc and L_eff stay -cos."""
    batch, per_bug, dim = 2, 1, 8
    torch.manual_seed(0)
    anchors = torch.randn(batch + per_bug, dim)  # h(x) of the batch, then h(x_r)
    out = torch.randn(2 * batch + 3 * per_bug, dim)
    stamped = torch.cat([torch.arange(batch, 2 * batch), torch.arange(2 * batch + 2 * per_bug, len(out))])
    out[stamped] = anchors + 0.01 * torch.randn_like(anchors)  # x⊕t a hair away from its anchor
    pulls, terms = {}, {}
    for distance in ("cosine", "chord"):
        leaf = out.clone().requires_grad_(True)
        terms[distance] = loss_terms(leaf, anchors, batch=batch, per_bug=per_bug,
                                     params=MudjackingParams(generality_distance=distance))
        (grad,) = torch.autograd.grad(terms[distance]["generalisability"], leaf)
        pulls[distance] = float(grad[stamped].norm())
    gaps = (F.normalize(out[stamped], dim=-1) - F.normalize(anchors, dim=-1)).norm(dim=-1)
    want = float(gaps[:batch].mean() + gaps[batch:].mean())
    assert float(terms["chord"]["generalisability"]) == pytest.approx(want, rel=1e-4)
    assert float(terms["cosine"]["generalisability"]) == pytest.approx(-2.0, abs=1e-3)
    for other in ("locality", "effectiveness"):
        assert float(terms["chord"][other]) == float(terms["cosine"][other]), other
    assert pulls["chord"] > 20 * pulls["cosine"] > 0
