"""Per-view random augmentation as batched tensor ops, on the device.

The authors' views with torchvision's formulas: horizontal flip p=0.5; colour jitter
(brightness 0.4, contrast 0.4, saturation 0.4, hue 0.1) with p=0.8; grayscale p=0.2.
Every sample draws its own flip, jitter factors and coin flips; the order of the four
jitter steps is drawn once per call, as kornia's ColorJitter does. Plain torch ops
rather than kornia's: kornia's RGB↔HSV round trip for the hue step took 1.3 s for one
step's 536 views (32×32) on 2 busy CPU cores, these formulas ~0.1 s single-threaded
(see `single_threaded`). The tests check each step against kornia.enhance.
"""

from __future__ import annotations

import torch
from torch import nn

from mudjack.device import single_threaded

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as torchvision and kornia
HSV_OFFSETS = (5.0, 3.0, 1.0)  # sector offsets of R, G, B in the HSV → RGB formula


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) → (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in turns [0, 1), saturation and value, each (N, 1, H, W)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    value, low = x.amax(1, keepdim=True), x.amin(1, keepdim=True)
    chroma = value - low
    grey = chroma == 0
    saturation = chroma / torch.where(value == 0, torch.ones_like(value), value)
    divisor = torch.where(grey, torch.ones_like(chroma), chroma)
    hue = torch.where(value == r, (g - b) / divisor,
                      torch.where(value == g, 2 + (b - r) / divisor, 4 + (r - g) / divisor))
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    return torch.remainder(hue / 6, 1.0), saturation, value


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Channel n = V − V·S·clamp(min(k, 4 − k), 0, 1) with k = (offset_n + 6·H) mod 6."""
    offsets = torch.tensor(HSV_OFFSETS, device=hue.device, dtype=hue.dtype).view(1, 3, 1, 1)
    k = torch.remainder(offsets + 6 * hue, 6)
    return value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` turns (torchvision's adjust_hue factor)."""
    hue, saturation, value = rgb_to_hsv(x)
    return hsv_to_rgb(torch.remainder(hue + shift, 1.0), saturation, value)


JITTER_STEPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


class ViewAugmentation(nn.Module):
    """Random flip, colour jitter and grayscale of [0, 1] images (N, 3, H, W), per sample."""

    def __init__(self, *, flip: float = 0.5, jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 jitter_p: float = 0.8, grayscale_p: float = 0.2) -> None:
        super().__init__()
        self.flip, self.jitter, self.jitter_p, self.grayscale_p = flip, jitter, jitter_p, grayscale_p

    def _coins(self, n: int, p: float, device: torch.device) -> torch.Tensor:
        return torch.rand(n, 1, 1, 1, device=device) < p

    def _factors(self, n: int, device: torch.device) -> list[torch.Tensor]:
        """Per-sample factors of the four steps; neutral for samples the jitter skips."""
        applied = self._coins(n, self.jitter_p, device)
        factors = []
        for index, strength in enumerate(self.jitter):
            centre = 0.0 if index == 3 else 1.0  # hue shifts around 0, the others scale around 1
            low = -strength if index == 3 else max(0.0, 1 - strength)
            draw = low + (centre + strength - low) * torch.rand(n, 1, 1, 1, device=device)
            factors.append(torch.where(applied, draw, torch.full_like(draw, centre)))
        return factors

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with single_threaded(x.device):
            return self._augment(x)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n, device = len(x), x.device
        x = torch.where(self._coins(n, self.flip, device), x.flip(3), x)
        factors = self._factors(n, device)
        for step in torch.randperm(4).tolist():
            x = JITTER_STEPS[step](x, factors[step])
        return torch.where(self._coins(n, self.grayscale_p, device), grayscale(x).expand_as(x), x)


def mudjacking_augmentation() -> nn.Module:
    """The authors' views: flip p=0.5, colour jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2.

    Works on pixels in [0, 1]; every sample of a batch draws its own parameters,
    so each view gets its own augmentation. Normalisation happens in the encoder.
    """
    return ViewAugmentation()
