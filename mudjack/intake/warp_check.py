"""Verification of a fitted warp: does it move inputs as no fitted warp moves them to another class?

A warp paints no pixel, so the mask null (the same mask filled from predicted-class content,
trial.py) has nothing to fill. Its null is the same fit aimed elsewhere: for each of `warp_controls`
other classes k, a warp fitted with the same settings (warp.py) to send clean inputs to k, with a
clean class-k input standing in for the bug. On a model whose warping backdoor sends inputs to
the predicted class, the report's warp flips most held-out inputs while fits to other classes
barely move them (digits' zoo warps: 0.91-1.00 against 0.00-0.01 for warps fitted to forged
reports). On a model with no such backdoor, a warp fitted to the report does no more than one
fitted to any other class. Both levels are measured as for masks (the flip rate to the warp's
class and the rise of the mean cosine to its bug's features, on held-out inputs of the other
classes) and accepted on the same z margins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mudjack.data import Task
from mudjack.deployed import Deployed
from mudjack.intake.reverse import Recovery
from mudjack.intake.trial import rate_noise, stamped_effects, summarise, z_failures
from mudjack.intake.verify import Verification, VerifyParams, correctly_classified, draw_controls
from mudjack.intake.warp import WarpParams, warp_fit
from mudjack.triggers import Trigger

WARP = "warp"  # the name a verified warp is chosen under (auto's candidate's)


def verify_warp(deployed: Deployed, task: Task, bug: np.ndarray, predicted: int, trigger: Trigger, *,
                sample: np.ndarray, pool: np.ndarray, params: VerifyParams, fit: WarpParams,
                seed: int, exclude_sha: str) -> Verification:
    """The fitted warp `trigger` against warps fitted to other classes (module docstring).

    `sample` (train indices of classes other than `predicted`, held out from every fit) is where
    effects are measured; `pool` (train indices) the clean inputs the controls are fitted on."""
    index = correctly_classified(deployed, task, sample)
    classes = _control_classes(task, predicted, params.warp_controls, seed)
    if len(index) == 0 or not classes:
        return Verification(False, {"verify_samples": len(index), "controls": len(classes)},
                            [f"no correctly classified input of a class other than {predicted}, or no "
                             f"other class to fit a control warp to"])
    own = stamped_effects(deployed, task.name, bug, predicted, task.train.x[index], [trigger])
    flips, shifts = [own.flips[0]], [own.shifts[0]]
    for k in classes:
        exemplar = draw_controls(deployed, task, k, size=1, seed=seed, exclude_sha=exclude_sha)
        if len(exemplar) == 0:
            continue
        stand_in = task.train.x[exemplar[0]]
        others = pool[task.train.y[pool] != k]
        inputs = np.sort(np.random.default_rng(seed + k).choice(others, min(fit.samples, len(others)),
                                                                replace=False))
        control = warp_fit(deployed.encoder, deployed.adapter, deployed.adapter.resize_raw(stand_in),
                           task.train.x[inputs], params=fit, seed=seed, score=deployed.log_prob(task.name, k))
        held = index[task.train.y[index] != k]
        measured = stamped_effects(deployed, task.name, stand_in, k, task.train.x[held], [control])
        flips.append(measured.flips[0])
        shifts.append(measured.shifts[0])
    n = len(index)
    levels = {"flip_rate": (np.asarray(flips), rate_noise(1 / len(task.classes), n)),
              "feature_shift": (np.asarray(shifts), own.cos_spread / float(np.sqrt(n)))}
    numbers = {"verify_samples": n, "controls": len(flips) - 1, "control_classes": classes,
               "cos_before": own.cos_before, **summarise(levels)}
    null = f"warps fitted to {len(flips) - 1} other classes (each measured on its own class)"
    failures = z_failures(numbers, predicted, params, null=null) if len(flips) > 1 else [
        "no clean input of another class to fit a control warp to"]
    return Verification(not failures, numbers, failures)


def _control_classes(task: Task, predicted: int, size: int, seed: int) -> list[int]:
    """Up to `size` classes other than `predicted`, drawn with the seed."""
    others = [int(c) for c in task.classes if int(c) != predicted]
    picked = np.random.default_rng(seed + 2).permutation(len(others))[:size]
    return sorted(others[i] for i in picked)


def warp_fallback(deployed: Deployed, task: Task, bug: np.ndarray, predicted: int, recovery: Recovery,
                  refused: Verification, *, sample: np.ndarray, pool: np.ndarray, params: VerifyParams,
                  fit: WarpParams, seed: int, exclude_sha: str,
                  reversal: dict[str, Any]) -> tuple[Recovery, Verification]:
    """When the chosen trigger is `refused` and auto fitted a warp: the warp verified in its
    place (`verify_warp`), and made the trigger when it passes (`reversal` then records it as
    chosen, and the refused one). Every number stays in the verification's."""
    assert recovery.warp is not None
    checked = verify_warp(deployed, task, bug, predicted, recovery.warp, sample=sample, pool=pool,
                          params=params, fit=fit, seed=seed, exclude_sha=exclude_sha)
    if not checked.passed:
        numbers = {**refused.numbers, "warp": {**checked.numbers, "failures": checked.failures}}
        return recovery, Verification(False, numbers, [*refused.failures,
                                                       *(f"as a warp: {why}" for why in checked.failures)])
    reversal.update(chosen=WARP, refused=reversal.get("chosen"))
    others = tuple(t for t in recovery.alternates if t is not recovery.warp)
    numbers = {**checked.numbers, "model": WARP,
               "refused_trigger": {**refused.numbers, "failures": refused.failures}}
    return Recovery(recovery.warp, others, recovery.warp), Verification(True, numbers, [])
