"""The model as the provider deploys it: the (backdoored) encoder, its adapter, each task's head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mudjack.config import ParamsError
from mudjack.data import read_task_json
from mudjack.encoders import EncoderAdapter, ImageEncoder, load_encoder
from mudjack.encoders.folding import folded
from mudjack.features import extract_features, is_placed, on_device
from mudjack.heads import Head, head_misfit, load_head, predict
from mudjack.safepath import one_line


@dataclass
class Deployed:
    """What the provider runs: the backdoored encoder and each task's head."""

    encoder: ImageEncoder
    adapter: EncoderAdapter
    heads: dict[str, Head]
    left_out: dict[str, str] = field(default_factory=dict)  # task -> why its head file is not used

    def for_inference(self, device: torch.device | None = None) -> Deployed:
        """The same model with the encoder's BatchNorms folded into its convolutions (a frozen
        copy, mudjack/encoders/folding.py), its network run on `device` when that is not the CPU
        (mudjack.features.placed): for intake, which runs it often and never trains it. A model
        already prepared is returned as it is."""
        if is_placed(self.encoder):
            return self
        encoder = on_device(folded(self.encoder), device or torch.device("cpu"))
        return self if encoder is self.encoder else Deployed(encoder, self.adapter, self.heads, self.left_out)

    def flip_rate(self, task: str, target: int) -> Callable[[torch.Tensor], float]:
        """Share of a [0, 1] pixel batch the deployed classifier puts in `target`."""

        def rate(pixels: torch.Tensor) -> float:
            with torch.no_grad():
                return float((self.heads[task](self.encoder(pixels)).argmax(1) == target).float().mean())

        return rate

    def log_prob(self, task: str, target: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Per-input log-probability of `target` under the deployed classifier, differentiable
        in a batch of encoder features (what a reversal can optimise, on the features it has
        already computed for its cosine pull; `flip_rate` is its hard count on pixels)."""

        def score(features: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(self.heads[task](features), dim=1)[:, target]

        return score

    def classify(self, task: str, images: np.ndarray) -> np.ndarray:
        return predict(self.heads[task], extract_features(self.encoder, self.adapter, images))


def load_deployed(encoder: str | Path, heads: str | Path, tasks: str | Path) -> Deployed:
    """The encoder and each task's head (`<heads>/<task>/head.safetensors`). A head file that
    cannot be loaded, or does not fit the encoder's features or its task's classes (`<tasks>/
    <task>/task.json`), is left out with its reason in `left_out`, so that only its task's
    reports are refused."""
    if not Path(heads).is_dir():  # a mistyped paths.heads: every report refused, intake exiting 0
        raise ParamsError(f"heads folder not found: {one_line(heads)!r} (paths.heads)")
    model, adapter = load_encoder(encoder)
    fitting, left_out = {}, {}
    for path in sorted(Path(heads).glob("*/head.safetensors")):
        head, problem = _checked_head(path, adapter.feature_dim, Path(tasks) / path.parent.name / "task.json")
        if head is None:
            left_out[path.parent.name] = problem
        else:
            fitting[path.parent.name] = head
    return Deployed(model, adapter, fitting, left_out)


def _checked_head(path: Path, features: int, task_json: Path) -> tuple[Head | None, str]:
    """(the head, "") or (None, why it cannot serve: naming the file)."""
    try:
        head = load_head(path)
        classes = len(read_task_json(task_json)["classes"]) if task_json.is_file() else None
        problem = head_misfit(head, features=features, classes=classes)
    except ValueError as err:  # a WeightsError names the file already; a task.json that cannot be read
        return None, str(err)
    return (None, f"{path}: {problem}") if problem else (head, "")
