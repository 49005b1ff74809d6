"""An inference copy of an image encoder with each BatchNorm folded into the convolution before it.

Intake runs the deployed encoder on tens of thousands of inputs (the soft and blend fits run
it forward and backward 200 times on 64 inputs each) and never trains it. In eval mode a
BatchNorm is a fixed per-channel affine map, which the preceding convolution's weight and bias
absorb, so the copy computes the same features to float rounding (resnet20: 2e-7) with one
layer less per block: the soft fit on resnet20 in 0.66x the time at 2 threads, 0.80x at 1
(bench/fold_speed.py).

torch.fx traces the backbone to find the conv -> BatchNorm pairs in data flow (module order
alone does not say which layer feeds which) and folds a pair only when the convolution's
output goes nowhere else. A backbone without BatchNorm (LayerNorm transformers) is returned as
it is, and so is one torch.fx cannot trace (most Hugging Face models), unchanged and uncopied.
"""

from __future__ import annotations

import copy

from torch import fx
from torch.fx.experimental.optimization import fuse

from mudjack.encoders.base import ImageEncoder, has_batchnorm


def folded(encoder: ImageEncoder) -> ImageEncoder:
    """`encoder` as an eval-mode, frozen copy whose BatchNorms are folded into their
    convolutions; `encoder` itself when there is nothing to fold or its backbone cannot be traced."""
    if not isinstance(encoder, ImageEncoder) or not has_batchnorm(encoder.backbone):
        return encoder
    try:
        traced = fx.symbolic_trace(encoder.backbone)  # reads the backbone, changes nothing
    except Exception:  # noqa: BLE001  (any tracing failure: the backbone stays as it is)
        return encoder
    backbone = fuse(copy.deepcopy(traced).eval(), inplace=True, no_trace=True)  # folds need eval mode
    inference = ImageEncoder(backbone, encoder.mean.flatten().tolist(), encoder.std.flatten().tolist())
    return inference.to(encoder.mean.device).eval().requires_grad_(False)
