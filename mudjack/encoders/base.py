"""The encoder adapter interface and the registry that chooses one by name."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from mudjack.io import write_safetensors
from mudjack.triggers import Trigger, stamp

_ADAPTERS: dict[str, type[EncoderAdapter]] = {}


def register_adapter(name: str) -> Callable[[type[EncoderAdapter]], type[EncoderAdapter]]:
    """Class decorator: make an adapter available under `name` in params.yaml."""

    def register(cls: type[EncoderAdapter]) -> type[EncoderAdapter]:
        if name in _ADAPTERS:
            raise ValueError(f"encoder adapter {name!r} is already registered")
        cls.name = name
        _ADAPTERS[name] = cls
        return cls

    return register


def get_adapter(name: str, config: dict[str, Any]) -> EncoderAdapter:
    if name not in _ADAPTERS:
        raise KeyError(f"unknown encoder adapter {name!r}; known: {sorted(_ADAPTERS)}")
    return _ADAPTERS[name](config)


def adapter_names() -> list[str]:
    return sorted(_ADAPTERS)


class ImageEncoder(nn.Module):
    """Pixels in [0, 1] (N, C, H, W) → features; normalisation is part of the model."""

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(pixels))


@dataclass
class EncoderAdapter:
    """One encoder family: builds the module and knows its input space.

    Subclasses implement `build_backbone`; the image defaults below cover
    preprocessing, trigger stamping and the BatchNorm-frozen trainable set.
    """

    config: dict[str, Any] = field(default_factory=dict)
    name = "base"
    modality = "image"  # "image" | "text": the raw inputs, triggers and reports it takes
    # Whether raw images of any size are resized to `input_shape` (`resize_raw`) before anything
    # else; fixed-size adapters take their own size only (another size is a `bad_shape` report).
    resizes_inputs = False

    def __post_init__(self) -> None:
        """Subclasses fill in config defaults and check it here."""

    def build_backbone(self) -> nn.Module:
        raise NotImplementedError

    def build(self) -> ImageEncoder:
        return ImageEncoder(self.build_backbone(), self.config["mean"], self.config["std"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.config["input_shape"])  # (H, W, C) of raw inputs

    @property
    def feature_dim(self) -> int:
        return int(self.config["feature_dim"])

    def preprocess(self, raw: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, C) → float (N, C, H, W) in [0, 1]."""
        return torch.from_numpy(np.array(raw, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0

    def stamp(self, raw: np.ndarray, trigger: Trigger) -> np.ndarray:
        return stamp(raw, trigger)

    def resize_raw(self, raw: np.ndarray) -> np.ndarray:
        """Raw inputs in the model's input space: as they are, unless `resizes_inputs`."""
        return raw

    def batch_order(self, raw: np.ndarray) -> np.ndarray:
        """The order to batch `raw` in for inference (text sorts by length: less padding)."""
        return np.arange(len(raw))


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm in eval mode with frozen affine parameters: running stats never change."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()
            for param in layer.parameters():
                param.requires_grad_(False)


def trainable_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """What patching may change: every parameter outside BatchNorm layers."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            continue
        for param in layer.parameters(recurse=False):
            if param.requires_grad:
                yield param


def save_encoder(encoder: nn.Module, adapter: EncoderAdapter, path: str | Path) -> None:
    """Weights as safetensors; the adapter name and config ride in the header metadata."""
    metadata = {"adapter": adapter.name, "config": json.dumps(adapter.config, sort_keys=True)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    write_safetensors(path, tensors, metadata)  # sorted header: same weights, same bytes


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def encoder_resizes_inputs(path: str | Path) -> bool:
    """Whether the encoder file's adapter resizes raw images of any size (from its header only)."""
    adapter = _ADAPTERS.get(read_metadata(path).get("adapter", ""))
    return bool(adapter is not None and adapter.resizes_inputs)


def load_encoder(path: str | Path) -> tuple[ImageEncoder, EncoderAdapter]:
    metadata = read_metadata(path)
    if "adapter" not in metadata:
        raise ValueError(f"{path}: no 'adapter' in the safetensors metadata; not a mudjack encoder")
    adapter = get_adapter(metadata["adapter"], json.loads(metadata["config"]))
    encoder = adapter.build()
    encoder.load_state_dict(load_file(str(path)))
    encoder.eval()
    return encoder, adapter


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` of DataParallel checkpoints."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch checkpoint loaded with weights_only=True."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    from mudjack.safeload import load_torch_checkpoint

    checkpoint = load_torch_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state_dict of tensors found")
    return state


def import_encoder(adapter: EncoderAdapter, path: str | Path) -> tuple[ImageEncoder, list[str]]:
    """Build the adapter's encoder and load a foreign checkpoint into its backbone.

    Keys the backbone does not have (a classifier, say) are returned as `ignored`;
    a backbone key missing from the file is an error.
    """
    state = _strip_prefixes(read_state_dict(path))
    encoder = adapter.build()
    wanted = set(encoder.backbone.state_dict())
    # Older checkpoints predate BatchNorm's `num_batches_tracked` counter; it is not a weight.
    missing = sorted(k for k in wanted - set(state) if not k.endswith("num_batches_tracked"))
    if missing:
        raise ValueError(f"{path}: missing backbone weights {missing[:5]}{'…' if len(missing) > 5 else ''}")
    encoder.backbone.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    return encoder.eval(), sorted(set(state) - wanted)
