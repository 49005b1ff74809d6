"""Supervised pre-training of a clean encoder (the scenario's foundation model)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mudjack.config import BatchSize, Epochs, LearningRate, Params
from mudjack.data import LabelledSet
from mudjack.encoders import EncoderAdapter, ImageEncoder


class PretrainParams(Params):
    epochs: Epochs = 15
    lr: LearningRate = 3e-3
    batch_size: BatchSize = 64


def pretrain_encoder(adapter: EncoderAdapter, data: LabelledSet, classes: int,
                     params: PretrainParams, *, seed: int = 0) -> ImageEncoder:
    """Train encoder + linear probe with cross-entropy; return the encoder in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    encoder = adapter.build()
    probe = nn.Linear(adapter.feature_dim, classes)
    model = nn.Sequential(encoder, probe).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr)
    labels = torch.as_tensor(data.y, dtype=torch.long)
    fit_cross_entropy(model, adapter.preprocess(data.x), labels, optimiser, epochs=params.epochs,
                      batch_size=params.batch_size, generator=generator)
    return encoder.eval()


def sgd_or_adam(parameters: Iterable[nn.Parameter], name: str, *, lr: float, momentum: float,
                weight_decay: float) -> torch.optim.Optimizer:
    """Adam, or SGD with momentum: the choice every training loop here offers."""
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)


def fit_cross_entropy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                      optimiser: torch.optim.Optimizer, *, epochs: int, batch_size: int,
                      generator: torch.Generator) -> None:
    """Plain mini-batch cross-entropy training, reshuffled every epoch."""
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(model(inputs[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
