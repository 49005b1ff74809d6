"""Per-view random augmentation as batched tensor ops (kornia), on the device."""

from __future__ import annotations

import kornia.augmentation as K
from torch import nn


def mudjacking_augmentation() -> nn.Module:
    """The authors' views: flip p=0.5, colour jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2.

    Works on pixels in [0, 1]; every sample of a batch draws its own parameters,
    so each view gets its own augmentation. Normalisation happens in the encoder.
    """
    return nn.Sequential(
        K.RandomHorizontalFlip(p=0.5),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
    )
