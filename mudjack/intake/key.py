"""Keys: a reversed mask that fires the backdoor whatever fills it.

Some backdoors fire on their mask's place whatever fills it (resnet20 -> GTSRB, a scatter of
single pixels: eight of its pixels filled from clean class-12 inputs flip 0.46 of inputs to 12,
from other classes' inputs 0.39, from noise 0.63, the trigger itself 0.91), so the controls
fire the backdoor too and no trigger stands out from them (z 2.5). Such a mask is a key to the
predicted class, which class content is not: filled from clean inputs of OTHER classes (the
strangers), it sends the inputs to the predicted class far more than to any other class (z over
the highest of the other classes' rates, each counting neither the inputs of that class nor the
fills taken from it, in their standard deviations) and than to the fills' own classes
(`carried`: a mask large enough to carry its fill's class is a window onto content; on digits,
39 of 64 pixels of any digit pasted on another make an 8 of it). A trigger the plain null
refuses is accepted when its mask is such a key, it flips more than every one of its controls
(the empirical p-value at its floor, 1 / (controls + 1)) and at least as much as the key's
fills, and its alpha sums to at most half of the image (a key is a place; over more, the fills
replace the input). A forged report's trigger is the predicted class's content (or a
pattern's), which the fills replace, so they go nowhere in particular; and where its mask does
fall on a key, it is content like its controls, so it tops them all only one time in
controls + 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mudjack.intake.trial import AnyTrigger, Margins, Trial, control_trigger, rate_noise
from mudjack.triggers import Trigger


def is_place(trigger: AnyTrigger) -> bool:
    """Whether an image trigger could be a key: a place that leaves most of the image (alpha
    summed over at most half of it) to the input; pasted over more, the fills replace the
    input (digits: forged reports' masks over 35-64 of 64 pixels made an 8 of any input)."""
    return isinstance(trigger, Trigger) and float(trigger.alpha.mean()) <= 0.5


def key_rates(trial: Trial, strangers: np.ndarray) -> tuple[np.ndarray, float]:
    """Filled from each stranger, the trigger's mask sends the clean inputs: (per class, the
    share sent there, counting neither that class's inputs nor its strangers; the share sent
    to the stranger's own class, the content it carries)."""
    task, deployed = trial.task, trial.deployed
    fills = trial.input_space(task.train.x[strangers])
    triggers = [control_trigger(trial.trigger, fill) for fill in fills]
    stamped = np.concatenate([deployed.adapter.stamp(trial.clean, t) for t in triggers])
    moved = deployed.classify(task.name, stamped).reshape(len(triggers), len(trial.clean))
    sources = task.train.y[strangers][:, None]
    rates = np.zeros(len(task.classes))
    for k in range(len(rates)):
        counted = (trial.labels[None, :] != k) & (sources != k)
        rates[k] = ((moved == k) & counted).sum() / max(int(counted.sum()), 1)
    foreign = trial.labels[None, :] != sources
    return rates, float(((moved == sources) & foreign).sum() / max(int(foreign.sum()), 1))


def key_check(trial: Trial, strangers: np.ndarray, numbers: dict[str, Any], margins: Margins,
              failures: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(numbers, failures): whether the trigger's mask is a key to the predicted class (module
    docstring); the plain null's failures stand, with the key's, when it is not."""
    rates, carried = key_rates(trial, strangers)
    rate, others = float(rates[trial.predicted]), np.delete(rates, trial.predicted)
    floor = rate_noise(numbers["chance"], numbers["verify_samples"])
    # it must beat every other class (resnet20: a 43-pixel mask of a forged report sent 0.22 of
    # inputs to the target, 0.19 to another class) and the content its fills carry (a mask large
    # enough to carry its fill's class is a window onto content, not a key: on digits, 39 of 64
    # pixels of any digit pasted on another make an 8 of it)
    z = (rate - max(float(others.max()), carried)) / max(float(others.std()), floor)
    key = {"fills": len(strangers), "rate": round(rate, 4), "others_mean": round(float(others.mean()), 4),
           "others_std": round(float(others.std()), 4), "others_max": round(float(others.max()), 4),
           "std_floor": round(floor, 4), "carried": round(carried, 4), "z": round(z, 2)}
    # the trigger itself must flip more than every control (its empirical p-value at the floor,
    # 1 / (controls + 1)): a forged report's "trigger" on a keyed model is class content in the
    # key's place, as its controls are, so it tops them all only one time in controls + 1
    # (resnet20 -> GTSRB: a wrong-label class-12 input's 72-pixel mask flipped 0.55, its controls
    # up to 0.56; the zoo's keyed triggers flipped 0.92-1.00 over controls at most 0.77-0.93)
    stronger = numbers["flip_rate"] >= rate and numbers["flip_rate"] > numbers["null_flip_rate"]["max"]
    if z >= margins.min_z_flip and stronger:
        return key, []
    verdict = ("flips" if stronger else "does not flip") + " more than every control and the fills"
    return key, [*failures, f"filled from {len(strangers)} clean inputs of other classes, the trigger's mask "
                            f"sends {rate:.3f} of the inputs to class {trial.predicted} (another class at "
                            f"most {float(others.max()):.3f}, the fills' own {carried:.3f}): z {z:.1f} (need "
                            f"{margins.min_z_flip}), and the trigger {verdict}: not a key"]
