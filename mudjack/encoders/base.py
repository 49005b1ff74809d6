"""The encoder adapter interface and the registry that chooses one by name.

An adapter's config is checked against its pydantic `config_model` (bounded sizes) before
anything is built; weights files are checked by mudjack/safeload.py before they are read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from mudjack.config import describe_errors
from mudjack.io import write_safetensors
from mudjack.safeload import (
    SafetensorsHeader,
    TensorInfo,
    WeightsError,
    check_finite,
    check_tensors,
    expected_tensors,
    load_checked,
    load_tensors,
    load_torch_checkpoint,
    metadata_json,
    read_header,
    weights_error,
)
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


Side = Annotated[int, Field(ge=1, le=4096)]
FeatureDim = Annotated[int, Field(ge=1, le=8192)]
Statistic = Annotated[list[float], Field(min_length=1, max_length=16)]
MAX_MEAN, MIN_STD, MAX_STD = 1e3, 1e-6, 1e3  # normalisation bounds for pixels in [0, 1]


class AdapterConfig(BaseModel):
    """Base of adapter config schemas: unknown keys (the image defaults a scenario's params
    inherit) are dropped, NaN and infinity refused."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class ImageConfig(AdapterConfig):
    """Raw input shape (H, W, C), feature size, and the normalisation the model applies."""

    input_shape: tuple[Side, Side, Annotated[int, Field(ge=1, le=16)]]
    feature_dim: FeatureDim
    mean: Statistic | None = None
    std: Statistic | None = None

    @model_validator(mode="after")
    def _statistics(self) -> ImageConfig:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, self.input_shape[2]):
                raise ValueError(f"{name} needs 1 or {self.input_shape[2]} values (one per channel)")
        # pixels are in [0, 1]: statistics outside these bounds make features inf or NaN
        if self.mean is not None and max(map(abs, self.mean)) > MAX_MEAN:
            raise ValueError(f"mean must lie within ±{MAX_MEAN:g}")
        if self.std is not None and not MIN_STD <= min(self.std) <= max(self.std) <= MAX_STD:
            raise ValueError(f"std must lie within [{MIN_STD:g}, {MAX_STD:g}]")
        return self


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
    config_model: ClassVar[type[AdapterConfig] | None] = None  # None: the config is not checked
    # Whether raw images of any size are resized to `input_shape` (`resize_raw`) before anything
    # else; fixed-size adapters take their own size only (another size is a `bad_shape` report).
    resizes_inputs = False
    # The patch runs the encoder's convolutions in NHWC (channels_last, faster on oneDNN); an
    # adapter sets it False where torch's NHWC kernels are not to be trusted (hf_vision).
    channels_last = True

    def __post_init__(self) -> None:
        self.config = self.check_config(self.config)

    def check_config(self, config: Any) -> dict[str, Any]:
        """`config` validated by `config_model`, defaults filled in; a WeightsError if it is bad."""
        if self.config_model is None:
            return dict(config)
        try:
            checked = self.config_model.model_validate(config)
        except ValidationError as err:
            raise WeightsError(f"{self.name} config: {describe_errors(err)}") from None
        return checked.model_dump(mode="json", exclude_none=True)

    def build_backbone(self) -> nn.Module:
        raise NotImplementedError

    def build(self) -> ImageEncoder:
        if "mean" not in self.config or "std" not in self.config:
            raise WeightsError(f"{self.name} config: no input normalisation (mean and std); give "
                               f"them in the config or import a checkpoint that holds them")
        return ImageEncoder(self.build_backbone(), self.config["mean"], self.config["std"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.config["input_shape"])  # (H, W, C) of raw inputs

    @property
    def stamp_side(self) -> tuple[int, int] | None:
        """The (H, W) `stamp` resizes raw inputs to before stamping; None: their own size."""
        return tuple(self.input_shape[:2]) if self.resizes_inputs else None

    @property
    def feature_dim(self) -> int:
        return int(self.config["feature_dim"])

    @property
    def pretrained_folder(self) -> Path | None:
        """The model folder whose own weights `load_pretrained` reads, or None: the encoder is
        built from its config (and trained, or a checkpoint imported into it)."""
        return None

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


def is_batchnorm(layer: nn.Module) -> bool:
    return isinstance(layer, nn.modules.batchnorm._BatchNorm)


def has_batchnorm(module: nn.Module) -> bool:
    return any(is_batchnorm(layer) for layer in module.modules())


def freeze_batchnorm(module: nn.Module) -> None:
    """BatchNorm in eval mode with frozen affine parameters: running stats never change."""
    for layer in module.modules():
        if is_batchnorm(layer):
            layer.eval()
            for param in layer.parameters():
                param.requires_grad_(False)


def trainable_parameters(module: nn.Module) -> Iterator[nn.Parameter]:
    """What patching may change: every parameter outside BatchNorm layers."""
    for layer in module.modules():
        if is_batchnorm(layer):
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
    """The safetensors header metadata, after the header is checked (a WeightsError if not)."""
    return read_header(path).metadata


def _adapter_of(path: str | Path, header: SafetensorsHeader) -> EncoderAdapter:
    """The adapter the file's metadata names, with its config checked; nothing is built."""
    name = header.metadata.get("adapter")
    if name is None:
        raise weights_error(path, "no 'adapter' in the safetensors metadata; not a mudjack encoder")
    if name not in _ADAPTERS:
        raise weights_error(path, f"unknown encoder adapter {name[:60]!r}; known: {adapter_names()}")
    config = metadata_json(path, header, "config") if "config" in header.metadata else {}
    if not isinstance(config, dict):
        raise weights_error(path, "its 'config' metadata is not a JSON object")
    try:
        return get_adapter(name, config)
    except WeightsError as err:
        raise weights_error(path, str(err)) from None


def _built(path: str | Path, build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """`build` whose config errors name the weights file."""

    def checked() -> nn.Module:
        try:
            return build()
        except WeightsError as err:
            raise weights_error(path, str(err)) from None

    return checked


def read_adapter(path: str | Path) -> EncoderAdapter:
    """The encoder file's adapter with its config checked, from the header alone (nothing is
    built, no weight is read); a WeightsError names the problem."""
    return _adapter_of(path, read_header(path))


def load_patch_of(path: str | Path, deployed: str | Path) -> tuple[ImageEncoder, EncoderAdapter]:
    """The patched encoder at `path`, refused (a WeightsError) unless it is the `deployed` one
    with other weights: patching changes weights only, and a model of another input shape,
    normalisation or feature size would be retrained, measured and exported as the repair."""
    encoder, adapter = load_encoder(path)
    original = read_adapter(deployed)
    if adapter.name != original.name:
        raise weights_error(path, f"a {adapter.name} encoder is not a patch of the {original.name} "
                                  f"encoder {deployed}")
    if changed := sorted(k for k in {*adapter.config, *original.config}
                         if adapter.config.get(k) != original.config.get(k)):
        raise weights_error(path, f"not a patch of {deployed}: its {', '.join(changed)} differ")
    return encoder, adapter


def load_encoder(path: str | Path) -> tuple[ImageEncoder, EncoderAdapter]:
    """A mudjack encoder file: header, adapter config, then names and shapes are checked
    before the model is built and its weights read (a WeightsError names the problem)."""
    header = read_header(path)
    adapter = _adapter_of(path, header)
    return load_checked(path, header, _built(path, adapter.build)), adapter


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` of DataParallel checkpoints."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch checkpoint loaded with weights_only=True."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_tensors(path)
    checkpoint = load_torch_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise weights_error(path, "no state_dict of named tensors found")
    check_finite(path, state)
    return state


def _take_normalisation(adapter: EncoderAdapter, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A whole ImageEncoder's state dict (`mean`, `std`, `backbone.*`): its normalisation goes
    into the adapter's config and the backbone's weights are returned; others pass as they are."""
    if not ({"mean", "std"} <= set(state) and any(k.startswith("backbone.") for k in state)):
        return state
    stats = {name: state[name].flatten().tolist()[:64] for name in ("mean", "std")}
    adapter.config = adapter.check_config({**adapter.config, **stats})
    return {k.removeprefix("backbone."): v for k, v in state.items() if k not in stats}


def import_encoder(adapter: EncoderAdapter, path: str | Path) -> tuple[ImageEncoder, list[str]]:
    """Build the adapter's encoder and load a foreign checkpoint into its backbone.

    Keys the backbone does not have (a classifier, say) are returned as `ignored`;
    a backbone key missing from the file, or of another shape, is a WeightsError, raised
    before the encoder is built. A mudjack encoder's own state dict brings its normalisation.
    """
    state = _strip_prefixes(read_state_dict(path))
    try:
        state = _take_normalisation(adapter, state)
    except WeightsError as err:
        raise weights_error(path, str(err)) from None
    wanted = expected_tensors(_built(path, lambda: adapter.build().backbone))
    found = {k: TensorInfo.of(v) for k, v in state.items()}
    check_tensors(path, found, wanted, what="backbone weights", extra_allowed=True)
    encoder = adapter.build()
    encoder.backbone.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    return encoder.eval(), sorted(set(state) - set(wanted))
