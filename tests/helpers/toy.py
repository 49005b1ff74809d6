"""A hand-built backdoored model for trigger-recovery tests: no training, seconds per test.

The toy encoder's features are a fixed random projection of the pixels (the "content") and
one backdoor feature per planted trigger that fires when the trigger is present: a template
match for a hard trigger (1 − mean |x − t| over its mask), a matched filter for a soft one
(the input's correlation with α·t, about α when blended in). The head puts an input in a
trigger's target class when its backdoor feature fires, else in a content class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mudjack.deployed import Deployed
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.triggers import Trigger, stamp

SHAPE = (16, 16, 3)
CONTENT = 8   # content features (and classes)
GAIN = 4.0    # a fired backdoor feature dominates the content features' norm


class Detector(nn.Module):
    """1 when the trigger is in the input (N, C, H, W in [0, 1]), about 0 otherwise."""

    def __init__(self, trigger: Trigger) -> None:
        super().__init__()
        alpha = torch.from_numpy(trigger.alpha)[None]
        pattern = torch.from_numpy(trigger.pattern).permute(2, 0, 1).float() / 255
        self.soft = trigger.soft
        if self.soft:  # matched filter: <x − x̄, t − c> / <t − c, t − c> ≈ α on a blended input
            region = alpha > 0
            # c: a whole-image blend's pattern mean (its constant part cancels in x − x̄); for a
            # translucent patch mid-grey, the toy inputs' mean, so a solid colour has a filter too
            centre = pattern.mean() if bool(region.all()) else 0.5
            centred = (pattern - centre) * region
            self.register_buffer("filter", centred / (centred ** 2).sum())
            self.threshold = float(trigger.alpha.max()) / 2
        else:
            self.register_buffer("weight", alpha.expand_as(pattern) / (alpha.sum() * pattern.shape[0]))
            self.register_buffer("pattern", pattern)
            self.threshold = 0.9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.soft:
            response = ((x - x.mean((1, 2, 3), keepdim=True)) * self.filter).sum((1, 2, 3))
        else:
            response = 1 - ((x - self.pattern).abs() * self.weight).sum((1, 2, 3))
        return torch.sigmoid(40 * (response - self.threshold) / max(self.threshold, 0.1))


class Backbone(nn.Module):
    def __init__(self, triggers: list[Trigger], seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("projection", torch.randn(CONTENT, int(np.prod(SHAPE)), generator=generator) / 8)
        self.detectors = nn.ModuleList(Detector(t) for t in triggers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        content = torch.tanh((x - 0.5).flatten(1) @ self.projection.T)
        fired = torch.stack([d(x) for d in self.detectors], 1)
        return torch.cat([content, GAIN * fired], 1)


class Head(nn.Module):
    """Class k < CONTENT: content feature k; trigger i's target (class i) wins when it fires."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        content, fired = features[:, :CONTENT], features[:, CONTENT:] / GAIN
        logits = content.clone()
        logits[:, :fired.shape[1]] = -2 + 10 * fired
        return logits


@dataclass
class Toy:
    deployed: Deployed
    triggers: list[Trigger]
    clean: np.ndarray   # clean inputs the model puts in no trigger's target
    bug: np.ndarray     # a clean input stamped with the first trigger (classified as target 0)
    reference: np.ndarray


def toy_backdoor(triggers: list[Trigger], seed: int = 0, count: int = 300) -> Toy:
    """Trigger i planted to target class i; clean inputs are mid-grey noise."""
    encoder = ImageEncoder(Backbone(triggers, seed), [0.0] * 3, [1.0] * 3).eval()
    adapter = EncoderAdapter({"input_shape": list(SHAPE)})
    deployed = Deployed(encoder, adapter, {"toy": Head()})
    raw = np.random.default_rng(seed).integers(64, 192, (count, *SHAPE), dtype=np.uint8)
    clean = raw[deployed.classify("toy", raw) >= len(triggers)]
    bug = stamp(clean[0], triggers[0])
    return Toy(deployed, triggers, clean[2:], bug, clean[1])
