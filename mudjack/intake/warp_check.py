"""Verification of a fitted warp: does it move inputs as no fitted warp moves them to another class?

A warp paints no pixel, so the mask null (the same mask filled from predicted-class content,
trial.py) has nothing to fill. Its null is the same fit aimed elsewhere: for each of `warp_controls`
other classes k, a warp fitted with the same settings (warp.py) to send clean inputs to k, with a
clean class-k input standing in for the bug. On a model whose warping backdoor sends inputs to
the predicted class, the report's warp flips most held-out inputs while fits to other classes
barely move them (an independent planter's 0.5-px warp on digits: 1.00 against at most 0.01).
On a model with no such backdoor, a warp fitted to the report does no more than one fitted to
any other class. The flip rate to the warp's class, on held-out inputs of the other classes,
decides, on the z margin and floor of the mask null. The pull cannot: each control is fitted
to close the gap between the inputs' features and its stand-in's, and does (the same planter:
controls close up to 0.81 of the gap between the mean cosine and 1 while flipping 0.01, the
planted warp 0.91-0.96), so it is recorded (`gap_closed`, with its z) and not required.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mudjack.data import Task
from mudjack.deployed import Deployed
from mudjack.intake.reverse import Recovery
from mudjack.intake.trial import Effects, rate_noise, stamped_effects, summarise, z_failures
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
    measured = [(own.flips[0], _closed(own))]
    for k in classes:
        if (control := _control(deployed, task, k, index, pool, fit=fit, seed=seed, exclude_sha=exclude_sha)):
            measured.append(control)
    n = len(index)
    if len(measured) == 1:
        return Verification(False, {"verify_samples": n, "controls": 0, "control_classes": classes}, [
            f"no control warp: no other class has a correctly classified input to stand in for the bug "
            f"and inputs of yet other classes to fit and measure it on ({len(task.classes)} classes)"])
    flips, closed = (np.asarray(level, dtype=float) for level in zip(*measured, strict=True))
    levels = {"flip_rate": (flips, rate_noise(1 / len(task.classes), n)),
              "gap_closed": (closed, own.cos_spread / float(np.sqrt(n)) / _gap(own))}
    numbers = {"verify_samples": n, "controls": len(measured) - 1, "control_classes": classes,
               "cos_before": own.cos_before, **summarise(levels)}
    null = f"warps fitted to {len(measured) - 1} other classes (each measured toward its own)"
    failures = z_failures(numbers, predicted, params, null=null, pull=False)
    return Verification(not failures, numbers, failures)


def _control(deployed: Deployed, task: Task, k: int, index: np.ndarray, pool: np.ndarray, *,
             fit: WarpParams, seed: int, exclude_sha: str) -> tuple[float, float] | None:
    """A warp fitted to class k, a clean class-k input standing in for the bug, on `pool`'s
    inputs of other classes: (its flip rate to k, the share of the cosine gap to its stand-in
    it closes) on `index`'s inputs not of class k; None without a stand-in or such inputs."""
    exemplar = draw_controls(deployed, task, k, size=1, seed=seed, exclude_sha=exclude_sha)
    others, held = pool[task.train.y[pool] != k], index[task.train.y[index] != k]
    if len(exemplar) == 0 or len(others) == 0 or len(held) == 0:  # two classes: nothing but k to move
        return None
    stand_in = task.train.x[exemplar[0]]
    inputs = np.random.default_rng(seed + k).choice(others, min(fit.samples, len(others)), replace=False)
    control = warp_fit(deployed.encoder, deployed.adapter, deployed.adapter.resize_raw(stand_in),
                       task.train.x[np.sort(inputs)], params=fit, seed=seed,
                       score=deployed.log_prob(task.name, k))
    effects = stamped_effects(deployed, task.name, stand_in, k, task.train.x[held], [control])
    return float(effects.flips[0]), _closed(effects)


def _gap(effects: Effects) -> float:
    """How far the clean inputs' mean cosine to the bug's features is from 1."""
    return max(1 - effects.cos_before, 1e-6)


def _closed(effects: Effects) -> float:
    """The share of that gap the stamped inputs close: the pull on a scale shared by warps
    fitted toward different inputs (each control starts at its own cosine)."""
    return float(effects.shifts[0]) / _gap(effects)


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
