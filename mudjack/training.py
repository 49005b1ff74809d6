"""Supervised pre-training of a clean encoder (the scenario's foundation model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mudjack.config import Params
from mudjack.data import LabelledSet
from mudjack.encoders import EncoderAdapter, ImageEncoder


class PretrainParams(Params):
    epochs: int = 15
    lr: float = 3e-3
    batch_size: int = 64


def pretrain_encoder(adapter: EncoderAdapter, data: LabelledSet, classes: int,
                     params: PretrainParams, seed: int = 0) -> ImageEncoder:
    """Train encoder + linear probe with cross-entropy; return the encoder in eval mode."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    encoder = adapter.build()
    probe = nn.Linear(adapter.feature_dim, classes)
    model = nn.Sequential(encoder, probe).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr)
    pixels = adapter.preprocess(data.x)
    labels = torch.as_tensor(data.y, dtype=torch.long)
    for _ in range(params.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), params.batch_size):
            batch = order[start:start + params.batch_size]
            loss = F.cross_entropy(model(pixels[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return encoder.eval()
