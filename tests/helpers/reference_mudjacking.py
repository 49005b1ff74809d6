"""The authors' Mudjacking step restated plainly: the baseline of bench/patch_speed.py and the
oracle of the step-equivalence test (tests/test_speed.py).

Per step, for a batch of B shadow images x, h' runs five times on full batches (x, x⊕t,
and B copies each of x_b, x_r and x_r⊕t) and h twice (x and the B copies of x_r). Every
copy is augmented on its own, one image at a time, in the Dataset's __getitem__ of a torch
DataLoader, as a PIL-transform pipeline does. Copy i of a batch belongs to bug i mod n,
and shadow image i carries that bug's trigger.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mudjack.encoders import freeze_batchnorm, trainable_parameters
from mudjack.features import cosine
from mudjack.triggers import blend

Views = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def plain_loss(patched: nn.Module, frozen: nn.Module, views: Views, *, lambda_gen: float = 1.0,
               lambda_eff: float = 1.0, generality: str = "patched",
               distance: str = "cosine") -> dict[str, torch.Tensor]:
    """METHOD.md's loss from five passes of h' and two of h, one per full batch; `generality:
    frozen` pulls the stamped views to h's clean features instead of h''s; `distance: chord`
    scores L_gen's pairs by the Euclidean distance of the normalised features."""
    x, x_t, bug, ref, ref_t = views
    h_x, h_x_t, h_bug, h_ref, h_ref_t = (patched(v) for v in views)
    with torch.no_grad():
        frozen_x, frozen_ref = frozen(x), frozen(ref)
    locality = -cosine(h_x, frozen_x).mean() - cosine(h_ref, frozen_ref).mean()
    anchor, anchor_ref = (frozen_x, frozen_ref) if generality == "frozen" else (h_x, h_ref)
    if distance == "chord":
        generalisability = (_unit_distance(h_x_t, anchor).mean()
                            + _unit_distance(h_ref_t, anchor_ref).mean())
    else:
        generalisability = -cosine(h_x_t, anchor).mean() - cosine(h_ref_t, anchor_ref).mean()
    effectiveness = -cosine(h_bug, h_ref).mean()
    loss = locality + lambda_gen * generalisability + lambda_eff * effectiveness
    return {"loss": loss, "locality": locality, "generalisability": generalisability,
            "effectiveness": effectiveness}


def _unit_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).norm(dim=-1)


class ReferenceViews(Dataset):
    """Item i: the five views of shadow image i and of copy i, each augmented on its own.

    `bugs`, `references`, `patterns` are (n, C, H, W) in [0, 1]; `masks` (n, 1, H, W).
    """

    def __init__(self, pixels: torch.Tensor, bugs: torch.Tensor, references: torch.Tensor,
                 masks: torch.Tensor, patterns: torch.Tensor,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self.pixels, self.bugs, self.references = pixels, bugs, references
        self.masks, self.patterns, self.augment = masks, patterns, augment

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> Views:
        j = index % len(self.bugs)
        mask, pattern = self.masks[j], self.patterns[j]
        x, ref = self.pixels[index], self.references[j]
        views = (x, blend(x, pattern, mask), self.bugs[j], ref, blend(ref, pattern, mask))
        if self.augment is None:
            return views
        return tuple(self.augment(view[None])[0] for view in views)


def reference_loader(dataset: ReferenceViews, *, batch_size: int, seed: int, workers: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                      num_workers=workers, persistent_workers=workers > 0)


def plain_models(encoder: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(h' trainable with BatchNorm frozen, h frozen), both copies of `encoder`."""
    frozen = copy.deepcopy(encoder).eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    patched = copy.deepcopy(encoder).train()
    freeze_batchnorm(patched)
    return patched, frozen


def plain_optimiser(patched: nn.Module, *, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(list(trainable_parameters(patched)), lr=lr, momentum=momentum,
                           weight_decay=weight_decay)


def plain_step(patched: nn.Module, frozen: nn.Module, optimiser: torch.optim.Optimizer,
               views: Views, *, lambda_gen: float = 1.0, lambda_eff: float = 1.0) -> dict[str, float]:
    terms = plain_loss(patched, frozen, views, lambda_gen=lambda_gen, lambda_eff=lambda_eff)
    optimiser.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimiser.step()
    return {name: float(value.detach()) for name, value in terms.items()}
