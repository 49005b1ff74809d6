"""Soft trigger recovery: an alpha mask and a pattern, optimised so that blending them onto
clean inputs of other classes acts like the bug.

    min_{α, t}  −mean cos(h(x ⊕ t), h(x_b)) − c·mean log p(ŷ_b | x ⊕ t)
                + λ·mean(α) + φ·mean(α·(t − x_b)²),        x ⊕ t = x·(1−α) + t·α

α = sigmoid(logits) (H, W), t in [0, 1] (C, H, W) starts at the bug's pixels x_b. The cosine
pull is the encoder-level evidence (as in inversion.py); the log-probability of the bug's
predicted class under the deployed head (`score`, when intake passes it) the classifier-level
one; λ keeps the mask small and φ keeps the pattern on the bug's pixels where α is large (the
bug carries the trigger). A patch comes out as α ≈ 1 on a region, a whole-image blend as a
small α everywhere with t free to move where the bug's pixels only carry a trace of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from pydantic import Field

from mudjack.config import Params
from mudjack.encoders import EncoderAdapter, ImageEncoder
from mudjack.features import cosine
from mudjack.intake.masks import masked_trigger
from mudjack.triggers import Trigger, blend

# The deployed classifier's per-input log-probability of the bug's class, differentiable in
# the encoder's features (so one encoder pass serves both terms of the loss).
Score = Callable[[torch.Tensor], torch.Tensor]


class SoftParams(Params):
    steps: int = Field(200, ge=1, le=20_000)
    lr: float = 0.1
    samples: int = Field(64, ge=1)  # clean inputs the trigger is fitted on
    sparsity: float = 0.2           # λ: weight of the mean alpha
    fidelity: float = 1.0           # φ: weight of alpha·(pattern − bug)²
    classifier: float = 0.1         # c: weight of the deployed head's −log p(bug's class)
    init_alpha: float = Field(0.5, gt=0, lt=1)
    floor: float = Field(0.02, ge=0, lt=1)  # alpha below it is 0: outside the trigger
    threshold: float = Field(0.5, gt=0, lt=1)  # where the binarised candidate cuts alpha


@contextmanager
def frozen(encoder: ImageEncoder) -> Iterator[ImageEncoder]:
    """The encoder in eval mode with its parameters frozen; their flags restored after."""
    flags = [param.requires_grad for param in encoder.parameters()]
    encoder.eval().requires_grad_(False)
    try:
        yield encoder
    finally:
        for param, flag in zip(encoder.parameters(), flags, strict=True):
            param.requires_grad_(flag)


def minimise(variables: list[torch.Tensor], loss: Callable[[], torch.Tensor], *, steps: int, lr: float,
             project: Callable[[], None] | None = None) -> None:
    """Adam on `variables` for `steps` steps; `project` (under no_grad) after each step."""
    optimiser = torch.optim.Adam(variables, lr=lr)
    for _ in range(steps):
        value = loss()
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        if project is not None:
            with torch.no_grad():
                project()


def fit_inputs(adapter: EncoderAdapter, bug: np.ndarray, clean: np.ndarray, *, samples: int,
               seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean inputs a trigger is fitted on, the bug) as pixels in [0, 1]."""
    pick = np.random.default_rng(seed).permutation(len(clean))[:samples]
    return adapter.preprocess(clean[np.sort(pick)]), adapter.preprocess(bug[None])


def alpha_logits(params: SoftParams, side: tuple[int, ...]) -> torch.Tensor:
    """Alpha's logits shaped (1, 1, *side), every one at `init_alpha`, to optimise."""
    start = float(np.log(params.init_alpha / (1 - params.init_alpha)))
    return torch.full((1, 1, *side), start, requires_grad=True)


def fit_loss(encoder: ImageEncoder, clean: torch.Tensor, bug: torch.Tensor, bug_features: torch.Tensor,
             alpha: torch.Tensor, pattern: torch.Tensor, *, params: SoftParams,
             score: Score | None) -> torch.Tensor:
    """The module's objective for one (alpha, pattern); the smooth fit's too, at fidelity 0."""
    features = encoder(blend(clean, pattern, alpha))
    loss = -cosine(features, bug_features).mean()
    if score is not None and params.classifier > 0:
        loss = loss - params.classifier * score(features).mean()
    return loss + params.sparsity * alpha.mean() + params.fidelity * (alpha * (pattern - bug) ** 2).mean()


def fit(encoder: ImageEncoder, clean: torch.Tensor, bug: torch.Tensor, logits: torch.Tensor,
        free: torch.Tensor, *, params: SoftParams, score: Score | None,
        pattern_of: Callable[[torch.Tensor], torch.Tensor] = lambda free: free) -> None:
    """Optimise alpha's `logits` and the pattern's `free` variables (pixels in [0, 1], kept
    there; `pattern_of` makes the pattern of them) in place on the module's objective."""
    with frozen(encoder):
        with torch.no_grad():
            bug_features = encoder(bug)
        minimise([logits, free], lambda: fit_loss(encoder, clean, bug, bug_features, torch.sigmoid(logits),
                                                  pattern_of(free), params=params, score=score),
                 steps=params.steps, lr=params.lr, project=lambda: free.clamp_(0, 1))


def soft_trigger(encoder: ImageEncoder, adapter: EncoderAdapter, bug: np.ndarray, clean: np.ndarray,
                 *, params: SoftParams, seed: int = 0, score: Score | None = None,
                 uniform: bool = False) -> Trigger:
    """The soft trigger (float alpha, pattern) that makes clean inputs act like the bug;
    `uniform`: one alpha for every pixel (a whole-image blend, the pattern free to differ from
    the bug's pixels wherever it needs to)."""
    clean_pixels, bug_pixels = fit_inputs(adapter, bug, clean, samples=params.samples, seed=seed)
    logits = alpha_logits(params, (1, 1) if uniform else tuple(bug_pixels.shape[-2:]))
    pattern = bug_pixels.clone().requires_grad_(True)
    fit(encoder, clean_pixels, bug_pixels, logits, pattern, params=params, score=score)
    alpha = torch.sigmoid(logits).detach()[0, 0].expand(bug_pixels.shape[-2:]).numpy()
    alpha = np.where(alpha >= params.floor, alpha, 0).astype(np.float32)
    pixels = np.rint(pattern.detach()[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return Trigger(mask=alpha, pattern=np.where(alpha[..., None] > 0, pixels, 0).astype(np.uint8))


def binarised(trigger: Trigger, bug: np.ndarray, threshold: float) -> Trigger:
    """The soft trigger as a hard one: alpha >= threshold, the bug's pixels under it."""
    return masked_trigger(trigger.alpha >= threshold, bug)
