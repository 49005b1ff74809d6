"""Reversal settings derived from the input size: the chosen-settings record.

A value of 0 (or "auto" for the scan sides) in `intake.reverse` means "derive from the
input side" s = min(H, W), so one default fits 8x8 digits, 32x32 CIFAR/GTSRB and larger
inputs; a scenario may still set any of them (a window, stride, scan side, grow pad or grid
larger than s is taken as s). The formulas reproduce the values tuned by
hand at 8 and 32 px (params.yaml's digits default; scenarios/resnet20-*.yaml):

- occlusion `window` = max(2, round(5·s/32)): 2 at 8 px, 5 at 32, 10 at 64;
- occlusion `stride` = max(1, s // 32): 1 up to 63 px, 2 at 64;
- grow `scan` sides  = round(s·k/32) for k in (6, 10, 14), at least 2, deduplicated: a fifth to
  a half of the side (6/10/14 at 32 px, 2/4 at 8, 12/20/28 at 64);
- grow `scan_stride` = max(1, round(s/16)): 1 at 8 px, 2 at 32, 4 at 64;
- smooth `grid` = min(8, max(2, s // 4)) cells a side: 8 from 32 px up (the pattern may change
  about 8 times across the image, a frequency relative to the image), and cells of at least
  4 px below it, where finer cells would free every pixel (digits: at 8 cells on 8 px the fit
  is the optimised blend again, and took two noise-blend reports from better candidates).
The smallest mask grow tries (`min_pixels`) is not scaled: triggers are drawn in pixels
(3-10 px patches whatever the image size), so it stays a 2x2 square.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mudjack.intake.reverse import ReverseParams

SCAN_AT_32 = (6, 10, 14)  # scan sides at 32 px (the resnet20-gtsrb tuning)


def occlusion_window(side: int) -> int:
    return max(2, round(5 * side / 32))


def occlusion_stride(side: int) -> int:
    return max(1, side // 32)


def scan_sides(side: int) -> list[int]:
    return sorted({max(2, round(side * k / 32)) for k in SCAN_AT_32})


def scan_stride(side: int) -> int:
    return max(1, round(side / 16))


def smooth_grid(side: int) -> int:
    return min(8, max(2, side // 4))


def resolve(params: ReverseParams, shape: tuple[int, ...]) -> tuple[ReverseParams, dict[str, Any]]:
    """`params` with every auto value (0, "auto") replaced by its derived value for inputs
    shaped (H, W, ...), and the record of the settings used (derived ones marked so)."""
    side = int(min(shape[:2]))
    grow = params.grow
    chosen = {
        "window": min(params.window or occlusion_window(side), side),
        "stride": min(params.stride or occlusion_stride(side), side),
    }
    grown = {
        "scan": scan_sides(side) if grow.scan == "auto" else [min(s, side) for s in grow.scan],
        "scan_stride": min(grow.scan_stride or scan_stride(side), side),
    }
    grid = min(params.smooth.grid or smooth_grid(side), side)
    derived = [name for name, value in [("window", params.window), ("stride", params.stride),
                                        ("scan", grow.scan), ("scan_stride", grow.scan_stride),
                                        ("grid", params.smooth.grid)]
               if value in (0, "auto")]
    grow = grow.model_copy(update={**grown, "pad": min(grow.pad, side)})
    resolved = params.model_copy(update={**chosen, "grow": grow,
                                         "smooth": params.smooth.model_copy(update={"grid": grid})})
    record = {"input_side": side, **chosen, **grown, "grid": grid, "derived": derived}
    return resolved, record
