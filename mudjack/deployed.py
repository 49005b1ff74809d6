"""The model as the provider deploys it: the (backdoored) encoder, its adapter, each task's head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.encoders.folding import folded
from mudjack.features import extract_features
from mudjack.heads import Head, predict


@dataclass
class Deployed:
    """What the provider runs: the backdoored encoder and each task's head."""

    encoder: ImageEncoder
    adapter: EncoderAdapter
    heads: dict[str, Head]
    left_out: dict[str, str] = field(default_factory=dict)  # task -> why its head file is not used

    def for_inference(self) -> Deployed:
        """The same model with the encoder's BatchNorms folded into its convolutions (a frozen
        copy, mudjack/encoders/folding.py): for intake, which runs it often and never trains it."""
        encoder = folded(self.encoder)
        return self if encoder is self.encoder else Deployed(encoder, self.adapter, self.heads, self.left_out)

    def flip_rate(self, task: str, target: int) -> Callable[[torch.Tensor], float]:
        """Share of a [0, 1] pixel batch the deployed classifier puts in `target`."""

        def rate(pixels: torch.Tensor) -> float:
            with torch.no_grad():
                return float((self.heads[task](self.encoder(pixels)).argmax(1) == target).float().mean())

        return rate

    def log_prob(self, task: str, target: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per-input log-probability of `target` under the deployed classifier, differentiable
        in a batch of encoder features (what a reversal can optimise, on the features it has
        already computed for its cosine pull; `flip_rate` is its hard count on pixels)."""

        def score(features: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(self.heads[task](features), dim=1)[:, target]

        return score

    def classify(self, task: str, images: np.ndarray) -> np.ndarray:
        return predict(self.heads[task], extract_features(self.encoder, self.adapter, images))
