"""The solid-colour patch a hard trigger is part of, read off the bug.

The smallest mask that flips the classifier is often part of a solid patch: on vit-cifar the
chosen 26-pixel mask held 7 % of the planted 10x10 white square, and patching against a part
leaves the rest working (true-trigger ASR 0.08-0.11 after the repair, against 0.05-0.06 with
the whole square). So for each of the few most common colours under the chosen mask, the
bug's pixels of that colour connected to it form a candidate patch (alone: the mask's other
pixels are left out); the one that reproduces the bug best is kept as an alternate when it
does so as well as `select.keep` asks, like the others. A colour that is the image's own
(sky, a sign's face) gives a region that flips nothing, or one larger than a trigger may be;
then the mask's own pixels of that colour are the candidate (forgery bench real-005,
resnet20-gtsrb: a white 10x10 patch touching a sign's white face and a bright background,
where grow's 289-pixel square and the binarised soft mask stayed unverified).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from scipy import ndimage

from mudjack.intake.masks import masked_trigger
from mudjack.triggers import Trigger

BIN = 32      # colour bins of 32 levels per channel pick the mask's common colours
COLOURS = 3   # the most common colours under the mask that are tried


def colour_patches(trigger: Trigger, bug: np.ndarray, *, tolerance: float,
                   max_fraction: float) -> Iterator[Trigger]:
    """For each common colour under `trigger`'s mask, the bug's pixels within `tolerance` x 255
    of it (every channel) 4-connected to the mask's pixels of that colour, when that adds
    pixels and stays within `max_fraction` of the image; where the colour runs on past that
    (a white patch on a sign's white face), its pixels inside the mask, when that leaves some
    of the mask out. Nothing for a soft trigger."""
    if trigger.soft or tolerance <= 0 or bug.ndim != 3:
        return
    region, pixels = trigger.region, bug.astype(np.int16)
    bins = pixels // BIN
    colours, counts = np.unique(bins[region], axis=0, return_counts=True)
    for colour in colours[np.argsort(-counts, kind="stable")][:COLOURS]:
        seeds = region & (bins == colour).all(axis=-1)
        near = np.abs(pixels - np.median(pixels[seeds], axis=0)).max(axis=-1) <= tolerance * 255
        labels, _ = ndimage.label(near | seeds)
        patch = np.isin(labels, np.unique(labels[seeds]))
        if patch.mean() > max_fraction:  # the colour runs on past the mask: its part inside
            patch = seeds | (near & region)
            if patch.sum() < region.sum():
                yield masked_trigger(patch, bug)
        elif patch.sum() > seeds.sum():
            yield masked_trigger(patch, bug)


def filled_alternate(trigger: Trigger, bug: np.ndarray, effect: Callable[[Trigger], float], *,
                     tolerance: float, max_fraction: float) -> tuple[Trigger, float] | None:
    """The colour patch with the largest effect, and that effect; None when there is none."""
    scored = [(patch, effect(patch)) for patch in
              colour_patches(trigger, bug, tolerance=tolerance, max_fraction=max_fraction)]
    return max(scored, key=lambda pair: pair[1], default=None)
