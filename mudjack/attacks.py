"""BadEncoder, used only to build backdoored encoders for evaluation."""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from torch import nn

from mudjack.config import BatchSize, Epochs, LearningRate, Momentum, NonNegative, Params
from mudjack.encoders import EncoderAdapter, ImageEncoder, freeze_batchnorm, trainable_parameters
from mudjack.features import cosine, extract_features, nearest_to_centroid
from mudjack.triggers import TextTrigger, Trigger, insert_words


class BadEncoderParams(Params):
    optimizer: Literal["sgd", "adam"] = "sgd"
    epochs: Epochs = 20
    lr: LearningRate = 1e-2
    batch_size: BatchSize = 64
    momentum: Momentum = 0.9
    weight_decay: NonNegative = 5e-4


def pick_attack_reference(encoder: ImageEncoder, adapter: EncoderAdapter, x: np.ndarray,
                          y: np.ndarray, target: int) -> np.ndarray:
    """The target-class image nearest its class centroid in the clean feature space."""
    candidates = x[y == target]
    if len(candidates) == 0:
        raise ValueError(f"no image of target class {target} to use as attack reference")
    return candidates[nearest_to_centroid(extract_features(encoder, adapter, candidates))]


def make_optimiser(parameters: list[torch.nn.Parameter], params: BadEncoderParams) -> torch.optim.Optimizer:
    if params.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(parameters, lr=params.lr, momentum=params.momentum,
                           weight_decay=params.weight_decay)


def badencoder_loss(out: torch.Tensor, n: int, clean_features: torch.Tensor,
                    ref_features: torch.Tensor) -> torch.Tensor:
    """out = h'([x (n), x⊕t (n), x_ref]): triggered → reference, clean and reference unchanged."""
    return (-cosine(out[n:2 * n], ref_features).mean()
            - cosine(out[:n], clean_features).mean()
            - cosine(out[-1:], ref_features).mean())


def badencoder(clean: ImageEncoder, adapter: EncoderAdapter, shadow: np.ndarray, trigger: Trigger,
               reference: np.ndarray, params: BadEncoderParams, seed: int = 0) -> ImageEncoder:
    """Fine-tune a copy so triggered inputs map to the reference's features, clean ones stay.

    Loss: −cos(h'(x⊕t), h(x_ref)) − cos(h'(x), h(x)) − cos(h'(x_ref), h(x_ref)).
    """
    if adapter.modality == "text":
        return badencoder_text(clean, adapter, shadow, trigger, reference, params, seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    backdoored = copy.deepcopy(clean).train()
    freeze_batchnorm(backdoored)
    optimiser = make_optimiser(list(trainable_parameters(backdoored)), params)
    pixels = adapter.preprocess(shadow)
    triggered = adapter.preprocess(adapter.stamp(shadow, trigger))
    ref_pixels = adapter.preprocess(reference[None])
    clean_features = extract_features(clean, adapter, shadow)
    with torch.no_grad():
        ref_features = clean.eval()(ref_pixels)
    for _ in range(params.epochs):
        order = torch.randperm(len(pixels), generator=generator)
        for start in range(0, len(order), params.batch_size):
            batch = order[start:start + params.batch_size]
            out = backdoored(torch.cat([pixels[batch], triggered[batch], ref_pixels]))
            loss = badencoder_loss(out, len(batch), clean_features[batch], ref_features)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return backdoored.eval()


def badencoder_text(clean: nn.Module, adapter: EncoderAdapter, shadow: np.ndarray,
                    trigger: TextTrigger, reference: np.ndarray, params: BadEncoderParams,
                    seed: int = 0) -> nn.Module:
    """BadEncoder on sentences, with the same loss as `badencoder`.

    Every epoch inserts the trigger words at fresh random positions; batches hold sentences
    of similar length. The encoder stays in eval mode (dropout off; gradients still flow),
    so h'(x) can match h(x) exactly. Use weight_decay 0 with Adam: an L2 term would move
    every word embedding, used or not.
    """
    from mudjack.encoders.text import length_batches

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    backdoored = copy.deepcopy(clean).eval()
    optimiser = make_optimiser(adapter.trainable_parameters(backdoored), params)
    reference = np.asarray(reference, dtype=np.str_).reshape(1)
    clean_features = extract_features(clean, adapter, shadow)
    ref_features = extract_features(clean, adapter, reference)
    for _ in range(params.epochs):
        for batch in length_batches(shadow, params.batch_size, rng):
            stamped = np.array([insert_words(s, trigger.words, rng) for s in shadow[batch]])
            out = backdoored(adapter.preprocess(np.concatenate([shadow[batch], stamped, reference])))
            loss = badencoder_loss(out, len(batch), clean_features[batch], ref_features)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return backdoored.eval()
