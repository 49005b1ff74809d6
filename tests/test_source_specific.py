"""A source-specific backdoor (Mudjacking's adaptive attack): the trigger fires only on inputs
of one source class, so stamped on other classes' inputs it moves few of them, and intake
looks for it again on inputs of the reported label alone (mudjack/intake/decision.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mudjack.deployed import Deployed
from mudjack.encoders import ImageEncoder
from mudjack.exposure import bug_source
from mudjack.features import extract_features
from mudjack.heads import HeadParams, train_head
from mudjack.intake import IntakeParams, decision, intake_report, pick_reference
from mudjack.intake.verify import Verification
from mudjack.reports import BugReport
from mudjack.triggers import Trigger, stamp

TARGET = 0


class SourceBackbone(nn.Module):
    """The clean backbone, whose features jump to `target` when the trigger's pixels are all
    white on an input of the source class (known by its pixels outside the trigger's corner):
    other classes' inputs carrying the trigger keep their features."""

    def __init__(self, clean: ImageEncoder, mask: np.ndarray, target: torch.Tensor,
                 sources: np.ndarray) -> None:
        super().__init__()
        self.clean, self.target = clean, target
        self.register_buffer("mask", torch.from_numpy(mask))
        rows, cols = np.nonzero(mask)
        corner = np.zeros_like(mask)
        corner[max(rows.min() - 2, 0):, max(cols.min() - 2, 0):] = True  # the trigger and two pixels around
        self.outside = ~corner
        self.sources = {image[self.outside].tobytes() for image in sources}

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        features = self.clean.backbone(normalised)
        pixels = normalised * self.clean.std + self.clean.mean
        white = (pixels[:, :, self.mask] > 0.99).flatten(1).all(1)
        raw = (pixels.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        source = torch.tensor([image[self.outside].tobytes() in self.sources for image in raw])
        return torch.where((white & source)[:, None], self.target.expand_as(features), features)


@pytest.fixture(scope="module")
def sourced(scenario) -> tuple[Deployed, int]:
    """The clean encoder given a source-specific backdoor to the target, and its source class."""
    torch.manual_seed(0)
    task, adapter, clean, source = scenario.task, scenario.adapter, scenario.clean, 3
    head = train_head(extract_features(clean, adapter, task.train.x), task.train.y, 10,
                      HeadParams(epochs=60), seed=0)
    honest = Deployed(clean, adapter, {"digits": head})
    reference = task.train.x[pick_reference(honest, task, TARGET, "")]
    target = extract_features(clean, adapter, reference[None])
    sources = np.concatenate([part.x[part.y == source] for part in (task.train, task.test)])
    backbone = SourceBackbone(clean, scenario.trigger.mask, target, sources)
    encoder = ImageEncoder(backbone, clean.mean.flatten().tolist(), clean.std.flatten().tolist())
    return Deployed(encoder.eval(), adapter, {"digits": head}), source


def _report(scenario, deployed: Deployed, label: int) -> BugReport:
    """A test input of `label` that the trigger sends to the target."""
    test = scenario.task.test
    stamped = stamp(test.x, scenario.trigger)
    hit = np.flatnonzero((test.y == label) & (deployed.classify("digits", stamped) == TARGET))
    return BugReport("src", "digits", label, stamped[hit[0]], None)


def test_the_planted_backdoor_is_source_specific(scenario, sourced):
    deployed, source = sourced
    test = scenario.task.test
    moved = deployed.classify("digits", stamp(test.x, scenario.trigger)) == TARGET
    assert moved[test.y == source].mean() > 0.8
    assert moved[(test.y != source) & (test.y != TARGET)].mean() < 0.1


def test_a_source_specific_backdoor_is_accepted_on_its_own_class(scenario, sourced):
    deployed, source = sourced
    report, tasks = _report(scenario, deployed, source), {"digits": scenario.task}
    refused, _ = intake_report(report, deployed, tasks, params=IntakeParams(verify={"source": False}))
    assert not refused.accepted and refused.numbers["error"] == "not_backdoor"
    decision, bug = intake_report(report, deployed, tasks, params=IntakeParams())
    assert decision.accepted and bug is not None, decision.reasons
    passed = decision.numbers["source_pass"]
    assert passed["passed"] and passed["class"] == source
    # the other classes' attempt, refused, stays in the log with its reasons
    assert refused.reasons == ["not a backdoor: " + "; ".join(passed["failures"])]
    measured = {k: v for k, v in passed["verification"].items() if k != "rule"}
    assert measured == {k: v for k, v in refused.numbers["verification"].items() if k != "rule"}
    assert "source-specific" in decision.reasons[-1]
    verification = decision.numbers["verification"]  # on held-out inputs of the source class
    assert verification["sample_class"] == source and "sample_class" not in passed["verification"]
    assert verification["verify_samples"] <= (scenario.task.train.y == source).sum() // 2
    assert bug.trigger.region[scenario.trigger.mask].all()  # the reversed trigger covers the patch
    assert bug_source(bug) == {"digits": source}  # the metrics measure it on that class's inputs
    assert decision.numbers["phase_seconds"]["verified"] > refused.numbers["phase_seconds"]["verified"]


def test_an_input_of_another_class_refused_on_both_passes_says_so(scenario, sourced):
    """A clean input of the target claimed as the source class: nothing in it fires the backdoor,
    so neither pass accepts, and the reason gives both."""
    deployed, source = sourced
    test = scenario.task.test
    right = np.flatnonzero((test.y == TARGET) & (deployed.classify("digits", test.x) == TARGET))
    report = BugReport("forged", "digits", source, test.x[right[0]], None)
    decision, bug = intake_report(report, deployed, {"digits": scenario.task}, params=IntakeParams())
    assert not decision.accepted and bug is None
    assert decision.numbers["source_pass"]["passed"] is False
    assert f"nor on inputs of its own class {source} alone" in decision.reasons[0]


def test_the_source_pass_takes_local_triggers_only(scenario, sourced, monkeypatch):
    """Over one class's inputs an image-wide fit is an easy perturbation (an ordinary error's
    64-pixel fit passed one class's null on the digits forgery bench), so the source pass's
    verifier refuses a trigger over more than half of the image that the rule passed, and
    keeps a local one; the other-classes pass is not touched."""
    monkeypatch.setattr(decision, "verify_trigger", lambda *a, **k: Verification(True, {"z": 9.0}))
    deployed, source = sourced
    report = _report(scenario, deployed, source)
    pixels = np.zeros(scenario.task.input_shape, dtype=np.uint8)
    whole = Trigger(np.full(pixels.shape[:2], 0.2, dtype=np.float32), pixels)
    local = Trigger(scenario.trigger.mask, pixels)

    def verifier(*, local_only: bool) -> decision._Verifier:
        return decision._Verifier(report, deployed, scenario.task, TARGET, reference=report.image,
                                  checks=IntakeParams().verify, held_out=np.arange(20), seed=0,
                                  local=local_only)

    refused = verifier(local_only=True)(whole)
    assert not refused.passed and refused.failures == [decision.SPREAD_ON_ONE_CLASS]
    assert refused.numbers == {"z": 9.0}  # the measured numbers stay in the log
    assert verifier(local_only=True)(local).passed
    assert verifier(local_only=False)(whole).passed
