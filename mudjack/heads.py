"""Downstream heads on frozen features: an MLP on L2-normalised features (the authors' evaluation
head), or a linear probe (one Linear layer, e.g. exported logistic-regression weights).

A head file is safetensors with its spec in the header (`head`): kind ("mlp" | "linear"; files
without it are MLPs), in_dim, classes, hidden, dropout, and normalize (default true: the
features are L2-normalised first). A linear probe's tensors are `mlp.0.weight` (classes, in_dim)
and `mlp.0.bias` (classes,).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

from mudjack.config import BatchSize, Dropout, Epochs, LearningRate, Params, Width, describe_errors
from mudjack.device import torch_threads
from mudjack.io import write_safetensors
from mudjack.safeload import load_checked, metadata_json, read_header, weights_error
from mudjack.training import fit_cross_entropy

HEAD_KINDS = ("mlp", "linear")


MAX_HIDDEN_WEIGHTS = 1 << 26  # 256 MiB of float32 between hidden layers


class HeadParams(Params):
    kind: Literal["mlp", "linear"] = "mlp"  # linear: a linear probe, no hidden layer
    hidden: list[Width] = Field([512, 256], max_length=16)  # [] is a linear probe too
    dropout: Dropout = 0.5
    epochs: Epochs = 200
    lr: LearningRate = 1e-3
    batch_size: BatchSize = 64

    @model_validator(mode="before")
    @classmethod
    def _linear_has_no_hidden_layer(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "linear":
            if data.get("hidden"):
                raise ValueError("a linear head has no hidden layers: leave `hidden` out or []")
            return {**data, "hidden": []}
        return data

    @field_validator("hidden")
    @classmethod
    def _bounded(cls, hidden: list[int]) -> list[int]:
        weights = sum(a * b for a, b in itertools.pairwise(hidden))
        if weights > MAX_HIDDEN_WEIGHTS:
            raise ValueError(f"the hidden layers hold {weights:,} weights between them; the limit is "
                             f"{MAX_HIDDEN_WEIGHTS:,} (a head on an encoder's features needs far fewer)")
        return hidden


class HeadSpec(Params):
    """A saved head's architecture (its safetensors metadata), bounded before it is built; files
    from before the linear probe have no `kind` and hold MLPs."""

    kind: Literal["mlp", "linear"] = "mlp"
    in_dim: Width
    classes: Width
    hidden: list[Width] = Field(max_length=16)
    dropout: Dropout = 0.0
    normalize: bool = True

    @model_validator(mode="after")
    def _linear_has_no_hidden_layer(self) -> HeadSpec:
        if self.kind == "linear" and self.hidden:
            raise ValueError("a linear head has no hidden layers")
        return self


class Head(nn.Module):
    """in → hidden… (ReLU, dropout after the first) → classes, on L2-normalised features
    (raw ones with normalize=False); with no hidden layer, a linear probe."""

    def __init__(self, in_dim: int, classes: int, *, hidden: list[int], dropout: float,
                 normalize: bool = True) -> None:
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
        self.normalize = normalize
        self.spec = {"kind": "mlp" if hidden else "linear", "in_dim": in_dim, "classes": classes,
                     "hidden": hidden, "dropout": dropout, "normalize": normalize}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(F.normalize(features, dim=-1) if self.normalize else features)


def linear_probe(weight: np.ndarray, bias: np.ndarray, *, normalize: bool = False) -> Head:
    """A linear head from exported weights, e.g. scikit-learn's LogisticRegression `coef_`
    (classes, in_dim) and `intercept_` (classes,) of a multinomial fit on raw features."""
    weight, bias = np.asarray(weight, dtype=np.float32), np.asarray(bias, dtype=np.float32)
    if weight.ndim != 2 or weight.shape[0] < 2 or bias.shape != (weight.shape[0],):
        raise ValueError(f"a linear probe needs weight (classes >= 2, in_dim) and bias (classes,), "
                         f"got {weight.shape} and {bias.shape}")
    head = Head(weight.shape[1], weight.shape[0], hidden=[], dropout=0.0, normalize=normalize)
    head.mlp[0].load_state_dict({"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)})
    return head.eval()


class Classifier(nn.Module):
    """Encoder + head: pixels in [0, 1] → logits. What is deployed and exported."""

    def __init__(self, encoder: nn.Module, head: Head) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(pixels))


def train_head(features: torch.Tensor, labels: np.ndarray, classes: int, params: HeadParams,
               *, seed: int = 0) -> Head:
    """Train a fresh head with Adam on fixed features; returns it in eval mode.

    Single-threaded: a small MLP gains nothing from more threads, and on a shared 2-core
    machine 2 threads made it 10-20x slower (a 384-d head: 25 s vs 2.9 s for 10 epochs).
    """
    with torch_threads(1):
        return _train_head(features, labels, classes, params, seed=seed)


def train_linear_probe(features: torch.Tensor, labels: np.ndarray, classes: int, *, epochs: int = 30,
                       seed: int = 0) -> Head:
    """A linear probe on fixed features (Adam 1e-2, batch 256): how linearly separable they are."""
    return train_head(features, labels, classes,
                      HeadParams(kind="linear", epochs=epochs, lr=1e-2, batch_size=256), seed=seed)


def _train_head(features: torch.Tensor, labels: np.ndarray, classes: int, params: HeadParams,
                *, seed: int) -> Head:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = Head(features.shape[1], classes, hidden=list(params.hidden), dropout=params.dropout)
    optimiser = torch.optim.Adam(head.parameters(), lr=params.lr)
    targets = torch.as_tensor(labels, dtype=torch.long)
    fit_cross_entropy(head.train(), features, targets, optimiser, epochs=params.epochs,
                      batch_size=params.batch_size, generator=generator)
    return head.eval()


@torch.inference_mode()
def predict(head: Head, features: torch.Tensor) -> np.ndarray:
    return head.eval()(features).argmax(1).numpy()


def save_head(head: Head, path: str | Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    write_safetensors(path, tensors, {"head": json.dumps(head.spec)})


def head_misfit(head: Head, *, features: int, classes: int | None) -> str | None:
    """Why a deployed head cannot serve an encoder of `features` features and a task of
    `classes` classes (None: the task is unknown), or None when it can."""
    if head.spec["in_dim"] != features:
        return f"takes {head.spec['in_dim']} features where the encoder gives {features}"
    if classes is not None and head.spec["classes"] != classes:
        return f"gives {head.spec['classes']} classes where its task has {classes}"
    return None


def load_head(path: str | Path) -> Head:
    """A saved head's architecture (its safetensors metadata), bounded before it is built."""
    header = read_header(path)
    try:
        spec = HeadSpec.model_validate(metadata_json(path, header, "head"))
    except ValidationError as err:
        raise weights_error(path, f"head spec: {describe_errors(err)}") from None
    return load_checked(path, header, lambda: Head(spec.in_dim, spec.classes, hidden=list(spec.hidden),
                                                   dropout=spec.dropout, normalize=spec.normalize))

