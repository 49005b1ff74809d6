"""Triggers whose optimised pattern departs from the bug's pixels: what they must show besides
beating the plain null (`verify.departure`).

An optimised pattern may add to the bug's pixels (its departure from them), and a free pattern
alone is an adversarial perturbation on a weak encoder: resnet20 -> GTSRB, a whole-image blend
fitted to a forged report flips 0.9 of other classes' inputs to any class (z 6-60 against the
plain controls; 20 of 20 forged reports were accepted). A genuine blend's fitted pattern departs
from the bug too (toward the trigger, which the bug carries only at its alpha), so a departure
alone condemns nothing. With `departure: restore` (the default) such a trigger must, in addition:
- taken off the bug (`unstamp`: the blend undone where alpha < 1/2, the reference's pixels
  where the trigger covers the input), give back the label the client reported, as a backdoor
  bug's trigger does; or, on at most half of the image, have flips that survive controls that
  keep the departure (so the bug's own content under the mask is what flips). A forged report's
  pattern is neither (resnet20 -> GTSRB: it leaves the predicted or a third class). Over more of
  the image the second does not hold: the pattern was fitted together with the bug's pixels
  under it, so swapping them is what the controls lose (resnet20 -> MNIST: forged reports'
  888-1024-pixel fits scored z 5.9-32 against them);
- and there, giving the label back must be the trigger's doing: fewer than half of its controls
  (the same alpha filled from clean predicted-class inputs), taken off the bug the same way, may
  give it back too. An ordinary error sits next to its true class, so leaning it away from the
  predicted class by any such blend restores it (resnet20 -> MNIST: genuine errors reported with
  their true labels, whole-image fits that transfer to a never-attacked model as well); a bug
  under a blended trigger keeps firing until the trigger itself is taken off (a weak one may
  not: digits, the 3-epoch blend of ASR 0.24, whose bugs 0.8-1.0 of the controls restore).
`departure: null` asks only for the departure-keeping controls (it also refuses genuine blends:
digits, 5 of 6 blend reports); `free` asks nothing (the plain null decides).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mudjack.intake.trial import Margins, Trial, z_failures
from mudjack.triggers import Trigger, unstamp


def departure_check(trial: Trial, label: int, reference: np.ndarray | str,
                    margins: Margins) -> tuple[dict[str, Any], list[str]]:
    """(numbers, failures): a departing trigger restores the reported label when taken off the
    bug, or its flips survive controls that keep its departure; over more than half of the
    image only the first counts, and then fewer than half of its controls may restore it too."""
    adapter, trigger = trial.deployed.adapter, trial.trigger
    assert isinstance(trigger, Trigger)  # text triggers never depart
    fill = adapter.resize_raw(np.asarray(reference))  # where the trigger covers the bug
    taken_off = unstamp(trial.bug, trigger, fill)
    restored = int(trial.deployed.classify(trial.task.name, taken_off[None])[0])
    numbers: dict[str, Any] = {"restored_class": restored, "restores": restored == label}
    if restored == label:
        return numbers, _restores_alone(trial, label, fill, numbers)
    # A trigger over more than half of the image (`Trigger.spread`) is an image-wide perturbation
    # fitted together with the bug's pixels under it, which controls that keep the departure but
    # swap those pixels undo: the fit, not the bug's content, makes it beat them (resnet20 ->
    # MNIST, forged reports' 888-1024-pixel fits scored z 5.9-32 against such controls and the
    # never-attacked model follows most of them), so only the restore rule can pass it.
    if trigger.spread:
        return numbers, [f"the trigger's pattern departs from the bug's pixels over "
                         f"{float(trigger.region.mean()):.0%} of the image and, taken off the bug, "
                         f"leaves class {restored}, not the reported {label}"]
    kept = trial.against_controls(keep_departure=True)
    numbers["kept_null"] = {k: kept[k] for k in ("z_flip_rate", "z_feature_shift", "p_flip_rate")}
    numbers["kept_null"]["null_flip_mean"] = kept["null_flip_rate"]["mean"]
    if not z_failures(kept, trial.predicted, margins):
        return numbers, []
    return numbers, [f"the trigger's pattern departs from the bug's pixels and its flips rest on that: "
                     f"taken off the bug it leaves class {restored}, not the reported {label}, and "
                     f"against controls that keep the departure it scores z "
                     f"{kept['z_flip_rate']:.1f} on the flip rate (need {margins.min_z_flip})"]


def _restores_alone(trial: Trial, label: int, fill: np.ndarray, numbers: dict[str, Any]) -> list[str]:
    """Failures (none or one) of a trigger that gives back the reported label: over more than
    half of the image, at least half of its controls must not (recorded in `numbers`); `fill`
    is the reference in the encoder's input space, as `unstamp` takes it."""
    if not trial.trigger.spread:
        return []
    numbers["controls_restoring"] = share = _controls_restoring(trial, label, fill)
    if share < 0.5:
        return []
    return [f"taken off the bug, the trigger's pattern over {float(trial.trigger.region.mean()):.0%} of the "
            f"image gives back the reported label {label}, but so do {share:.0%} of its controls (the same "
            f"alpha filled from clean class-{trial.predicted} inputs): the bug is next to class {label} "
            f"whatever is taken off it"]


def _controls_restoring(trial: Trial, label: int, fill: np.ndarray) -> float:
    """The share of the trigger's controls (its alpha filled from the controls' clean inputs of
    the predicted class) that, taken off the bug as the trigger is, give back `label`."""
    taken_off = np.stack([unstamp(trial.bug, control, fill) for control in trial.controls
                          if isinstance(control, Trigger)])
    return round(float((trial.deployed.classify(trial.task.name, taken_off) == label).mean()), 4)
