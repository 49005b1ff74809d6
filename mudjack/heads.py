"""Downstream heads: an MLP on L2-normalised frozen features (the authors' evaluation head)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError
from safetensors.torch import save_file
from torch import nn

from mudjack.config import BatchSize, Dropout, Epochs, LearningRate, Params, Width, describe_errors
from mudjack.device import torch_threads
from mudjack.io import atomic_path
from mudjack.safeload import load_checked, metadata_json, read_header, weights_error
from mudjack.training import fit_cross_entropy


class HeadParams(Params):
    hidden: list[Width] = Field([512, 256], max_length=16)
    dropout: Dropout = 0.5
    epochs: Epochs = 200
    lr: LearningRate = 1e-3
    batch_size: BatchSize = 64


class HeadSpec(Params):
    """A saved head's architecture (its safetensors metadata), bounded before it is built."""

    in_dim: Width
    classes: Width
    hidden: list[Width] = Field(max_length=16)
    dropout: Dropout


class Head(nn.Module):
    """in → hidden… (ReLU, dropout after the first) → classes, on L2-normalised features."""

    def __init__(self, in_dim: int, classes: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for i, size in enumerate(hidden):
            layers += [nn.Linear(width, size), nn.ReLU()]
            if i == 0 and dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, classes))
        self.mlp = nn.Sequential(*layers)
        self.spec = {"in_dim": in_dim, "classes": classes, "hidden": hidden, "dropout": dropout}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(F.normalize(features, dim=-1))


class Classifier(nn.Module):
    """Encoder + head: pixels in [0, 1] → logits. What is deployed and exported."""

    def __init__(self, encoder: nn.Module, head: Head) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(pixels))


def train_head(features: torch.Tensor, labels: np.ndarray, classes: int, params: HeadParams,
               seed: int = 0) -> Head:
    """Train a fresh head with Adam on fixed features; returns it in eval mode.

    Single-threaded: a small MLP gains nothing from more threads, and on a shared 2-core
    machine 2 threads made it 10-20x slower (a 384-d head: 25 s vs 2.9 s for 10 epochs).
    """
    with torch_threads(1):
        return _train_head(features, labels, classes, params, seed)


def _train_head(features: torch.Tensor, labels: np.ndarray, classes: int, params: HeadParams,
                seed: int) -> Head:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = Head(features.shape[1], classes, list(params.hidden), params.dropout)
    optimiser = torch.optim.Adam(head.parameters(), lr=params.lr)
    targets = torch.as_tensor(labels, dtype=torch.long)
    fit_cross_entropy(head.train(), features, targets, optimiser, params.epochs, params.batch_size,
                      generator)
    return head.eval()


@torch.inference_mode()
def predict(head: Head, features: torch.Tensor) -> np.ndarray:
    return head.eval()(features).argmax(1).numpy()


def save_head(head: Head, path: str | Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"head": json.dumps(head.spec)})


def load_head(path: str | Path) -> Head:
    """A saved head; its spec, names and shapes are checked before it is built (WeightsError)."""
    header = read_header(path)
    try:
        spec = HeadSpec.model_validate(metadata_json(path, header, "head"))
    except ValidationError as err:
        raise weights_error(path, f"head spec: {describe_errors(err)}") from None
    return load_checked(path, header,
                        lambda: Head(spec.in_dim, spec.classes, list(spec.hidden), spec.dropout))

