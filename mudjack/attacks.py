"""BadEncoder, used only to build backdoored encoders for evaluation."""

from __future__ import annotations

import copy

import numpy as np
import torch

from mudjack.config import Params
from mudjack.encoders import EncoderAdapter, ImageEncoder, freeze_batchnorm, trainable_parameters
from mudjack.features import cosine, extract_features, nearest_to_centroid
from mudjack.triggers import Trigger


class BadEncoderParams(Params):
    epochs: int = 20
    lr: float = 1e-2
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4


def pick_attack_reference(encoder: ImageEncoder, adapter: EncoderAdapter, x: np.ndarray,
                          y: np.ndarray, target: int) -> np.ndarray:
    """The target-class image nearest its class centroid in the clean feature space."""
    candidates = x[y == target]
    if len(candidates) == 0:
        raise ValueError(f"no image of target class {target} to use as attack reference")
    return candidates[nearest_to_centroid(extract_features(encoder, adapter, candidates))]


def badencoder(clean: ImageEncoder, adapter: EncoderAdapter, shadow: np.ndarray, trigger: Trigger,
               reference: np.ndarray, params: BadEncoderParams, seed: int = 0) -> ImageEncoder:
    """Fine-tune a copy so triggered inputs map to the reference's features, clean ones stay.

    Loss: −cos(h'(x⊕t), h(x_ref)) − cos(h'(x), h(x)) − cos(h'(x_ref), h(x_ref)).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    backdoored = copy.deepcopy(clean).train()
    freeze_batchnorm(backdoored)
    optimiser = torch.optim.SGD(list(trainable_parameters(backdoored)), lr=params.lr,
                                momentum=params.momentum, weight_decay=params.weight_decay)
    pixels = adapter.preprocess(shadow)
    triggered = adapter.preprocess(adapter.stamp(shadow, trigger))
    ref_pixels = adapter.preprocess(reference[None])
    with torch.no_grad():
        clean_features = clean.eval()(pixels)
        ref_features = clean(ref_pixels)
    for _ in range(params.epochs):
        order = torch.randperm(len(pixels), generator=generator)
        for start in range(0, len(order), params.batch_size):
            batch = order[start:start + params.batch_size]
            out = backdoored(torch.cat([pixels[batch], triggered[batch], ref_pixels]))
            n = len(batch)
            loss = (-cosine(out[n:2 * n], ref_features).mean()
                    - cosine(out[:n], clean_features[batch]).mean()
                    - cosine(out[-1:], ref_features).mean())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return backdoored.eval()
