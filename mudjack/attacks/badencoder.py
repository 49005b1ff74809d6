"""BadEncoder, used only to build backdoored encoders for evaluation.

It trains on `device` (the attack stage's and the sequela stage's `device`, CUDA when there is
one): the encoder being backdoored, its batches and the clean encoder's anchor features live
there; the inputs are kept on the CPU and moved a batch at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from mudjack.config import BatchSize, Epochs, LearningRate, Momentum, Params, WeightDecay
from mudjack.device import to_device
from mudjack.encoders import EncoderAdapter, ImageEncoder, freeze_batchnorm, trainable_parameters
from mudjack.features import cosine, extract_features, nearest_to_centroid, on_device
from mudjack.heads import train_linear_probe
from mudjack.training import sgd_or_adam
from mudjack.triggers import TextTrigger, Trigger

# Further (trigger, reference) pairs planted in the same encoder (a dual backdoor).
Pairs = Sequence[tuple[Trigger | TextTrigger, np.ndarray]]


class BadEncoderParams(Params):
    optimizer: Literal["sgd", "adam"] = "sgd"
    epochs: Epochs = 20
    lr: LearningRate = 1e-2
    batch_size: BatchSize = 64
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 5e-4


def _target_images(x: np.ndarray, y: np.ndarray, target: int) -> np.ndarray:
    if not np.any(y == target):
        raise ValueError(f"no image of target class {target} to use as attack reference")
    return x[y == target]


def pick_attack_reference(encoder: ImageEncoder, adapter: EncoderAdapter, x: np.ndarray,
                          y: np.ndarray, *, target: int) -> np.ndarray:
    """The target-class image nearest its class centroid in the clean feature space."""
    candidates = _target_images(x, y, target)
    return candidates[nearest_to_centroid(extract_features(encoder, adapter, candidates))]


def pick_confident_reference(encoder: ImageEncoder, adapter: EncoderAdapter, x: np.ndarray,
                             y: np.ndarray, *, target: int, seed: int = 0) -> np.ndarray:
    """The target-class image a linear probe on the clean features puts in the target class
    most surely. With a weak encoder the centroid's nearest image may sit in another class's
    region of the deployed head, and a backdoor sends triggered inputs where it goes."""
    candidates = _target_images(x, y, target)
    features = extract_features(encoder, adapter, x)
    probe = train_linear_probe(features, y, int(y.max()) + 1, seed=seed)
    with torch.no_grad():
        surety = torch.log_softmax(probe(features[torch.from_numpy(y == target)]), dim=1)[:, target]
    return candidates[int(surety.argmax())]


REFERENCE_PICKERS = {"centroid": pick_attack_reference, "confident": pick_confident_reference}


def pick_reference(encoder: ImageEncoder, adapter: EncoderAdapter, x: np.ndarray, y: np.ndarray, *,
                   target: int, how: str = "centroid") -> np.ndarray:
    """The attacker's target-class reference image, chosen as `how` says (REFERENCE_PICKERS)."""
    return REFERENCE_PICKERS[how](encoder, adapter, x, y, target=target)


def make_optimiser(parameters: list[torch.nn.Parameter], params: BadEncoderParams) -> torch.optim.Optimizer:
    return sgd_or_adam(parameters, params.optimizer, lr=params.lr, momentum=params.momentum,
                       weight_decay=params.weight_decay)


def badencoder_loss(out: torch.Tensor, n: int, clean_features: torch.Tensor,
                    ref_features: torch.Tensor) -> torch.Tensor:
    """out = h'([x (n), x⊕t_1 (n), …, x⊕t_k (n), x_ref_1, …, x_ref_k]) for k references:
    each triggered batch → its reference, clean and references unchanged."""
    k = len(ref_features)
    effect = sum(cosine(out[(i + 1) * n:(i + 2) * n], ref_features[i:i + 1]).mean() for i in range(k))
    return (-effect
            - cosine(out[:n], clean_features).mean()
            - cosine(out[-k:], ref_features).mean())


def badencoder(clean: ImageEncoder, adapter: EncoderAdapter, shadow: np.ndarray, trigger: Trigger,
               reference: np.ndarray, params: BadEncoderParams, *, seed: int = 0,
               more: Pairs = (), device: torch.device | None = None) -> ImageEncoder:
    """Fine-tune a copy (on `device`, returned on the CPU) so triggered inputs map to the
    reference's features, clean ones stay.

    Loss: −cos(h'(x⊕t), h(x_ref)) − cos(h'(x), h(x)) − cos(h'(x_ref), h(x_ref)), the first
    and last terms over (trigger, reference) and every pair in `more`.
    """
    pairs = [(trigger, reference), *more]
    return _last(badencoder_steps(clean, adapter, shadow, pairs, params, seed=seed, device=device), clean)


def anchors(clean: nn.Module, adapter: EncoderAdapter, shadow: np.ndarray, references: np.ndarray,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean encoder's features of the shadow inputs and of the references, on `device`
    (computed there by a frozen copy: `clean` itself stays where it is)."""
    frozen = on_device(clean, device)
    return (extract_features(frozen, adapter, shadow).to(device),
            extract_features(frozen, adapter, references).to(device))


def badencoder_steps(clean: nn.Module, adapter: EncoderAdapter, shadow: np.ndarray, pairs: Pairs,
                     params: BadEncoderParams, *, seed: int = 0,
                     device: torch.device | None = None) -> Iterator[nn.Module]:
    """BadEncoder one optimiser step at a time: yields the encoder being backdoored (a copy of
    `clean` on `device`, the CPU by default, in training mode) after every step,
    `params.epochs` epochs in all. A caller that evaluates it between steps must do so on
    `device` and put it back with `train_mode`."""
    device = device or torch.device("cpu")
    if adapter.modality == "text":
        yield from badencoder_text_steps(clean, adapter, shadow, pairs, params, seed=seed, device=device)
        return
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    backdoored = train_mode(copy.deepcopy(clean).to(device), adapter)
    optimiser = make_optimiser(list(trainable_parameters(backdoored)), params)
    pixels = adapter.preprocess(shadow)
    triggered = [adapter.preprocess(adapter.stamp(shadow, t)) for t, _ in pairs]
    references = np.stack([r for _, r in pairs])
    ref_pixels = adapter.preprocess(references)
    clean_features, ref_features = anchors(clean, adapter, shadow, references, device)
    for _ in range(params.epochs):
        order = torch.randperm(len(pixels), generator=generator)
        for start in range(0, len(order), params.batch_size):
            batch = order[start:start + params.batch_size]
            inputs = torch.cat([pixels[batch], *(t[batch] for t in triggered), ref_pixels])
            out = backdoored(to_device(inputs, device))
            loss = badencoder_loss(out, len(batch), clean_features[batch], ref_features)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            yield backdoored


def train_mode(encoder: nn.Module, adapter: EncoderAdapter) -> nn.Module:
    """The mode BadEncoder trains in: images with BatchNorm frozen, text in eval (no dropout)."""
    if adapter.modality == "text":
        return encoder.eval()
    encoder.train()
    freeze_batchnorm(encoder)
    return encoder


def steps_per_epoch(samples: int, params: BadEncoderParams) -> int:
    """Optimiser steps in one BadEncoder epoch over `samples` inputs."""
    return -(-samples // params.batch_size)


def _last(steps: Iterator[nn.Module], clean: nn.Module) -> nn.Module:
    """The encoder after the last step (a copy of `clean` when there is none), in eval mode, on
    the CPU (wherever it trained)."""
    last = None
    for encoder in steps:
        last = encoder
    return (copy.deepcopy(clean) if last is None else last).eval().cpu()


def badencoder_text(clean: nn.Module, adapter: EncoderAdapter, shadow: np.ndarray,
                    pairs: Pairs, params: BadEncoderParams, *, seed: int = 0,
                    device: torch.device | None = None) -> nn.Module:
    """BadEncoder on sentences, with the same loss as `badencoder` (see `badencoder_text_steps`)."""
    steps = badencoder_text_steps(clean, adapter, shadow, pairs, params, seed=seed, device=device)
    return _last(steps, clean)


def badencoder_text_steps(clean: nn.Module, adapter: EncoderAdapter, shadow: np.ndarray,
                          pairs: Pairs, params: BadEncoderParams, *, seed: int = 0,
                          device: torch.device | None = None) -> Iterator[nn.Module]:
    """BadEncoder on sentences, one optimiser step at a time (yields the encoder after each).

    Every epoch inserts the trigger words at fresh positions (random ones unless the trigger
    fixes them); batches hold sentences of similar length. The encoder stays in eval mode
    (dropout off; gradients still flow), so h'(x) can match h(x) exactly. Use weight_decay 0
    with Adam: an L2 term would move every word embedding, used or not.
    """
    from mudjack.encoders.text import length_batches

    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    backdoored = copy.deepcopy(clean).to(device).eval()
    optimiser = make_optimiser(adapter.trainable_parameters(backdoored), params)
    references = np.array([np.asarray(r, dtype=np.str_).reshape(()) for _, r in pairs])
    clean_features, ref_features = anchors(clean, adapter, shadow, references, device)
    for _ in range(params.epochs):
        for batch in length_batches(shadow, params.batch_size, rng):
            stamped = [np.array([t.insert(s, rng) for s in shadow[batch]]) for t, _ in pairs]
            tokens = adapter.preprocess(np.concatenate([shadow[batch], *stamped, references]))
            out = backdoored(to_device(tokens, device))
            loss = badencoder_loss(out, len(batch), clean_features[batch], ref_features)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            yield backdoored
