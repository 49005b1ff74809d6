"""Hugging Face vision backbones from a local folder: ViT, DeiT, the CLIP and SigLIP image
towers, DINOv2, ConvNeXt and ResNet (config.json, model.safetensors, preprocessor_config.json).

config (params.yaml `foundation.config`):
  folder    the model folder; a CLIP or SigLIP folder gives its image tower (vision_config)
  root      optional allowed root: `folder` must resolve inside it (default: the folder itself);
            every file read must resolve inside `folder` (no `..` or symlink escapes)
  pooling   pooled | cls | mean (default: cls for ViT/DeiT, whose pooler is a pretraining
            head often missing from a checkpoint; pooled for the others). `cls` needs a CLS
            token (not SigLIP, ConvNeXt, ResNet); `mean` averages all output tokens (or the
            last feature map's positions)
  model     instead of a folder: the architecture itself (`model_type` and that family's keys,
            as a saved encoder stores it), with input_shape, mean and std; the foundation stage
            fills those from its data and trains the model from random weights (vit-cifar)

From the folder the adapter takes the architecture (only the keys of `FAMILIES`, bounded by
`LIMITS`, in mudjack/encoders/hf_schema.py) and the input space: the side from `crop_size`
(when centre-cropping) or `size`, and `image_mean`/`image_std` (over 255 with `do_rescale: false`,
whose model normalises 0..255 pixels, as the adapter's stay in [0, 1]). The stored config (the
safetensors header) holds those, never the folder, so a saved encoder rebuilds without it; the
header is checked against the same schema before anything is built. Model classes come from a
fixed table keyed by `model_type`: no module is imported by a name read from a file, and
nothing is fetched from a hub.

Raw inputs are uint8 (N, H, W, C) of any size: images of another size are first resized to
the encoder's input (bilinear, antialiased, in torch, rounded back to uint8), so triggers,
reports and reversal all live in the model's input space. Non-square inputs are stretched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from mudjack.encoders.base import EncoderAdapter, ImageEncoder, register_adapter
from mudjack.encoders.hf_schema import (
    FAMILIES,
    Family,
    check_architecture,
    check_stored,
    family_of,
    is_number,
    model_classes,
)
from mudjack.io import require_regular_file
from mudjack.safeload import WeightsError, check_finite, expected_tensors, read_header, weights_error
from mudjack.safepath import one_line
from mudjack.triggers import Trigger, stamp

PARAM_KEYS = ("folder", "root", "pooling")
INHERITED_KEYS = ("input_shape", "mean", "std")  # image defaults the foundation stage adds
TOWERS = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}  # full folder -> image tower
RESCALE = 1 / 255
INDEX = "model.safetensors.index.json"
MAX_JSON_BYTES = 1 << 20  # config.json and preprocessor_config.json are a few KiB


# --------------------------------------------------------------------------- the folder


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, refused unless it resolves inside `folder` (no `..`, no symlink out)."""
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ValueError(f"hf_vision: {name!r} resolves outside the model folder {folder}")
    return path


def model_folder(config: dict[str, Any]) -> Path:
    folder = Path(str(config["folder"])).resolve()
    root = Path(str(config.get("root") or folder)).resolve()
    if not folder.is_relative_to(root):
        raise ValueError(f"hf_vision: folder {config['folder']!r} is outside the allowed root {root}")
    if not folder.is_dir():
        raise FileNotFoundError(f"hf_vision: no model folder at {folder}")
    return folder


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    """A JSON object file of the folder; anything else (a FIFO, over MAX_JSON_BYTES, not UTF-8
    JSON, nested past the parser) is a ValueError naming the file."""
    path = inside(folder, name)
    require_regular_file(path)
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"hf_vision: {path} is over {MAX_JSON_BYTES} bytes; not a model config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"hf_vision: {folder / name} is not UTF-8 JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise ValueError(f"hf_vision: {folder / name} is not a JSON object")
    return data


def architecture_from(config_json: dict[str, Any]) -> dict[str, Any]:
    """The family's keys of a config.json; a CLIP or SigLIP folder gives its vision_config."""
    model_type = config_json.get("model_type")
    if not isinstance(model_type, str):
        raise ValueError(f"hf_vision: config.json needs a model_type string, got {str(model_type)[:60]}")
    if model_type in TOWERS:
        config_json, model_type = config_json.get("vision_config") or {}, TOWERS[model_type]
        if not isinstance(config_json, dict):
            raise ValueError("hf_vision: config.json's vision_config must be a mapping, got "
                             f"{type(config_json).__name__}")
    family = family_of({"model_type": model_type})
    return {"model_type": model_type, **{k: config_json[k] for k in family.keys if k in config_json}}


def input_space(processor: dict[str, Any], channels: int) -> dict[str, Any]:
    """input_shape, mean and std from a preprocessor_config.json; mean and std apply to pixels
    in [0, 1], as the adapter's encoder normalises them."""
    rescale = _flag(processor, "do_rescale", default=True)
    factor = processor.get("rescale_factor", RESCALE)
    if rescale and not (is_number(factor) and abs(factor - RESCALE) <= 1e-9):
        raise ValueError("hf_vision: only rescale_factor 1/255 (pixels to [0, 1]) is supported, got "
                         f"{repr(factor)[:40]}")
    if "crop_size" in processor and "do_center_crop" not in processor:
        raise ValueError("hf_vision: preprocessor_config.json gives crop_size without do_center_crop; "
                         "whether the model's processor crops by default depends on its class "
                         "(DINOv2's and CLIP's do, ViT's does not): set do_center_crop true or false")
    crop = processor.get("crop_size") if _flag(processor, "do_center_crop", default=False) else None
    height, width = _side(crop or processor.get("size"))
    if _flag(processor, "do_normalize", default=True):
        mean, std = (_per_channel(processor, key, channels) for key in ("image_mean", "image_std"))
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    gain = 1.0 if rescale else 255.0  # without rescaling the model normalises 0..255 pixels
    return {"input_shape": [height, width, channels], "mean": _divided(mean, gain),
            "std": _divided(std, gain)}


def _flag(processor: dict[str, Any], key: str, *, default: bool) -> bool:
    value = processor.get(key, default)
    if not isinstance(value, bool):  # transformers would take any truthy value ("false") as true
        raise ValueError(f"hf_vision: preprocessor_config.json {key} must be true or false, got "
                         f"{repr(value)[:40]}")
    return value


def _divided(values: Any, gain: float) -> Any:
    """(pixels * gain - m) / s == (pixels - m / gain) / (s / gain); anything but a list of
    numbers is left for check_stored to refuse."""
    if gain == 1 or not isinstance(values, list) or not all(is_number(v) for v in values):
        return values
    return [v / gain for v in values]


def _per_channel(processor: dict[str, Any], key: str, channels: int) -> Any:
    """`key` as one number per channel (a single number, as transformers takes it, for each);
    missing is an error naming the file: its default depends on the processor's class."""
    if key not in processor:
        raise ValueError(f"hf_vision: preprocessor_config.json has no {key} (needed with do_normalize)")
    value = processor[key]
    return [value] * channels if is_number(value) else value


def _side(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if isinstance(size, list) and len(size) == 2:  # (height, width), as transformers reads it
        return size[0], size[1]
    if isinstance(size, dict) and "height" in size and "width" in size:
        return size["height"], size["width"]
    if isinstance(size, dict) and "shortest_edge" in size:
        return size["shortest_edge"], size["shortest_edge"]
    raise ValueError(f"hf_vision: cannot read an input size from {size!r}")


def read_folder(config: dict[str, Any]) -> dict[str, Any]:
    """The stored config (checked) from a model folder and the params' pooling."""
    folder = model_folder(config)
    model = check_architecture(architecture_from(_read_json(folder, "config.json")))
    space = input_space(_read_json(folder, "preprocessor_config.json"), model["num_channels"])
    return check_stored({"model": model, **space, "pooling": config.get("pooling")})


def weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards a model.safetensors.index.json names, all inside `folder`;
    a WeightsError otherwise."""
    try:
        return [inside(folder, name) for name in _weight_names(folder)]
    except ValueError as err:
        raise WeightsError(str(err)) from None


def _weight_names(folder: Path) -> list[str]:
    if not (folder / INDEX).exists():
        if not (folder / "model.safetensors").exists():
            raise ValueError(f"hf_vision: {folder} has no model.safetensors (only safetensors weights "
                             "are read, never a pytorch_model.bin)")
        return ["model.safetensors"]
    shards = _read_json(folder, INDEX).get("weight_map", {})
    if not shards or not isinstance(shards, dict) or not all(isinstance(s, str) for s in shards.values()):
        raise ValueError(f"hf_vision: {folder / INDEX}: weight_map must map tensor names to shard file names")
    return sorted(set(shards.values()))


def check_weight_kinds(paths: list[Path], build: Callable[[], nn.Module], prefix: str) -> None:
    """The files' tensors (from their checked safetensors headers; no data read) float where the
    model's are, and not where they are not: transformers casts int8 weights to floats silently.
    A classifier checkpoint's tensors carry the base model's `prefix`; tensors the model lacks
    (a text tower, a classifier head) are left out as transformers leaves them."""
    wanted = expected_tensors(build)
    for path in paths:
        for name, found in read_header(path).tensors.items():
            want = wanted.get(name) or wanted.get(name.removeprefix(f"{prefix}."))
            if want is not None and found.dtype.is_floating_point != want.dtype.is_floating_point:
                raise weights_error(path, f"tensor {name!r} is {str(found.dtype).removeprefix('torch.')}; "
                                          f"the model's is {str(want.dtype).removeprefix('torch.')}")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Keep transformers' loading report (the left-out text tower or classifier) off the console."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# --------------------------------------------------------------------------- the module


class HFVisionBackbone(nn.Module):
    """Normalised pixels (N, C, H, W) → the transformers model → pooled features (N, D)."""

    def __init__(self, model: nn.Module, pooling: str, tokens: bool) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.tokens = tokens

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels)
        if self.pooling == "pooled":
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        return hidden.mean(1) if self.tokens else hidden.mean((2, 3))


@register_adapter("hf_vision")
class HFVisionAdapter(EncoderAdapter):
    """A transformers vision backbone (see the module docstring for the config)."""

    resizes_inputs = True  # as its processor config does: images of any size, resized by resize_raw
    # torch 2.13's CPU backward of a 1x1 stride-2 convolution in NHWC segfaults at some shapes
    # (8 channels at 56x56: a small ResNet's shortcut at 224 px), so these models run in NCHW:
    # contiguous pixels and weights.
    channels_last = False

    def __post_init__(self) -> None:
        config = dict(self.config)
        self.source: Path | None = None
        if "folder" in config:
            unexpected = sorted(set(config) - {*PARAM_KEYS, *INHERITED_KEYS})
            if unexpected:
                raise ValueError(f"hf_vision: unexpected config keys {unexpected}; "
                                 f"allowed: {list(PARAM_KEYS)}")
            self.source = model_folder(config)
            self.config = read_folder(config)
        elif "model" not in config:
            raise ValueError("hf_vision: config needs `folder` (a model folder) or, as stored in a "
                             "saved encoder, `model`")
        else:
            self.config = check_stored(config)

    @property
    def pretrained_folder(self) -> Path | None:
        """The `folder` given (its weights are the pretrained encoder); None for a `model`
        config, trained here (vit-cifar), or an adapter restored from a saved encoder."""
        return self.source

    @cached_property
    def family(self) -> Family:
        return FAMILIES[self.config["model"]["model_type"]]

    def _model(self) -> tuple[type, Any, dict[str, bool]]:
        """The model class, its config object and the extra constructor arguments."""
        model = dict(self.config["model"])
        config_class, model_class = model_classes(model.pop("model_type"))
        pooled = self.config["pooling"] == "pooled"  # ViT/DeiT build their pretraining pooler only if used
        extra = {"add_pooling_layer": pooled} if self.family.optional_pooler else {}
        return model_class, config_class(**model), extra

    def build_backbone(self) -> HFVisionBackbone:
        """The architecture, randomly initialised (the config was checked in __post_init__)."""
        model_class, config, extra = self._model()
        return self._wrap(model_class(config, **extra))

    def _wrap(self, model: nn.Module) -> HFVisionBackbone:
        return HFVisionBackbone(model, self.config["pooling"], self.family.tokens).eval()

    def load_pretrained(self) -> ImageEncoder:
        """The folder's own weights (safetensors only), read by transformers with the checked
        config; a classifier's head or a CLIP text tower is left out. Weights that cannot be
        loaded as the config says (missing, cut off, of other shapes or dtypes, not finite) are a
        WeightsError naming the folder or file."""
        if self.source is None:
            raise ValueError("hf_vision: no model folder (this adapter was restored from a saved encoder)")
        model_class, config, extra = self._model()
        # every file transformers will read: inside the folder, a regular file, a sound header
        check_weight_kinds(weight_files(self.source), lambda: model_class(config, **extra),
                           model_class.base_model_prefix)
        try:
            with _quiet_transformers():
                model, info = model_class.from_pretrained(
                    str(self.source), config=config, local_files_only=True, use_safetensors=True,
                    dtype=torch.float32, output_loading_info=True, ignore_mismatched_sizes=True, **extra)
        except (RuntimeError, OSError, ValueError, SafetensorError) as err:
            raise weights_error(self.source, f"cannot load the weights: {one_line(str(err))[:300]}") from None
        missing = sorted(k for k in info["missing_keys"] if not k.endswith("num_batches_tracked"))
        if missing:
            hint = " (pooling: pooled needs the pooler; try cls)" if "pooler" in str(missing) else ""
            raise weights_error(self.source, f"lacks weights {missing[:5]}{hint}")
        if info["mismatched_keys"]:
            raise weights_error(self.source, "has weights of other shapes than its config says: "
                                             f"{sorted(map(str, info['mismatched_keys']))[:5]}")
        check_finite(self.source, model.state_dict())
        encoder = ImageEncoder(self._wrap(model), self.config["mean"], self.config["std"])
        return encoder.eval()

    @property
    def input_side(self) -> tuple[int, int]:
        return int(self.input_shape[0]), int(self.input_shape[1])

    def resize_raw(self, raw: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, C) or (H, W, C) at the encoder's input size."""
        raw = np.asarray(raw)
        if raw.shape[-3:-1] == self.input_side:
            return raw
        if raw.ndim not in (3, 4) or raw.shape[-1] != self.input_shape[2]:
            raise ValueError(f"hf_vision: images must be (N, H, W, {self.input_shape[2]}), got {raw.shape}")
        batch = torch.from_numpy(np.array(raw, dtype=np.uint8)).reshape(-1, *raw.shape[-3:])
        pixels = batch.permute(0, 3, 1, 2).float()
        resized = F.interpolate(pixels, size=self.input_side, mode="bilinear", align_corners=False,
                                antialias=True)
        out = resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return out.reshape(*raw.shape[:-3], *out.shape[1:])

    def preprocess(self, raw: np.ndarray) -> torch.Tensor:
        return super().preprocess(self.resize_raw(raw)).contiguous()  # NCHW: see channels_last

    def stamp(self, raw: np.ndarray, trigger: Trigger) -> np.ndarray:
        return stamp(self.resize_raw(raw), trigger)
