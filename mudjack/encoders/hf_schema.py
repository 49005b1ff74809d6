"""The schema an hf_vision config must pass before anything is built: the allowed model
types (a fixed table of transformers classes), the architecture keys each keeps, their bounds,
and the token and parameter budgets. Shared by a model folder's config.json and by the config
stored in a saved encoder's safetensors header (see mudjack/encoders/hf_vision.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

POOLINGS = ("pooled", "cls", "mean")
STORED_KEYS = ("model", "input_shape", "mean", "std", "pooling", "feature_dim")
MAX_SIDE = 1024
MAX_TOKENS = 4096
MAX_PARAMETERS = 1_200_000_000
ACTIVATIONS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu",
               "swish", "tanh")


@dataclass(frozen=True)
class Limit:
    """The allowed values of one architecture key: a bounded number, a choice or a short list."""

    kind: type
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()
    max_items: int = 0

    def check(self, key: str, value: Any) -> None:
        if self.kind is list:
            if not isinstance(value, list) or not 1 <= len(value) <= self.max_items:
                raise ValueError(f"hf_vision: {key} must be a list of 1 to {self.max_items} integers")
            for item in value:
                Limit(int, self.low, self.high).check(key, item)
        elif self.kind is str:
            if value not in self.choices:
                raise ValueError(f"hf_vision: {key}={value!r} is not one of {self.choices}")
        elif self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"hf_vision: {key} must be true or false, got {value!r}")
        elif not is_number(value, self.kind) or not self.low <= value <= self.high:
            raise ValueError(f"hf_vision: {key}={value!r} is outside [{self.low}, {self.high}]")


def is_number(value: Any, kind: type = float) -> bool:
    """A finite int or float (an int only, for kind int); never a bool."""
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def _int(high: int, low: int = 1) -> Limit:
    return Limit(int, low, high)


def _fraction(high: float = 1.0) -> Limit:
    return Limit(float, 0.0, high)


LIMITS: dict[str, Limit] = {
    "hidden_size": _int(4096), "num_hidden_layers": _int(64), "num_attention_heads": _int(64),
    "intermediate_size": _int(16384), "image_size": _int(MAX_SIDE, 8), "patch_size": _int(64),
    "num_channels": _int(4), "pooler_output_size": _int(4096), "embedding_size": _int(4096),
    "num_stages": _int(8), "hidden_sizes": Limit(list, 1, 4096, max_items=8),
    "depths": Limit(list, 1, 64, max_items=8), "mlp_ratio": Limit(float, 0.25, 16.0),
    "hidden_act": Limit(str, choices=ACTIVATIONS), "pooler_act": Limit(str, choices=ACTIVATIONS),
    "layer_type": Limit(str, choices=("basic", "bottleneck")), "layer_norm_eps": _fraction(0.1),
    "hidden_dropout_prob": _fraction(), "attention_probs_dropout_prob": _fraction(),
    "attention_dropout": _fraction(), "drop_path_rate": _fraction(), "layerscale_value": _fraction(10.0),
    "layer_scale_init_value": _fraction(10.0), "qkv_bias": Limit(bool), "use_swiglu_ffn": Limit(bool),
    "use_mask_token": Limit(bool), "vision_use_head": Limit(bool),
    "downsample_in_first_stage": Limit(bool), "downsample_in_bottleneck": Limit(bool),
}

_TRANSFORMER = ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
                "num_channels", "hidden_act", "layer_norm_eps")
_VIT = (*_TRANSFORMER, "intermediate_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
        "qkv_bias", "pooler_output_size", "pooler_act")
_TOWER = (*_TRANSFORMER, "intermediate_size", "attention_dropout")
_CONV = ("num_channels", "hidden_sizes", "depths", "hidden_act")


@dataclass(frozen=True)
class Family:
    """One allowed `model_type`: the architecture keys kept, and how its features are pooled."""

    keys: tuple[str, ...]
    tokens: bool                  # a transformer (tokens) rather than a CNN (feature maps)
    cls: bool                     # the first output token is a CLS token
    default_pooling: str
    fixed_size: bool              # position embeddings fixed to `image_size` (no interpolation)
    optional_pooler: bool = False  # built only for `pooling: pooled` (ViT/DeiT's pretraining head)


FAMILIES: dict[str, Family] = {
    "vit": Family(_VIT, True, True, "cls", True, optional_pooler=True),
    "deit": Family(_VIT, True, True, "cls", True, optional_pooler=True),
    "clip_vision_model": Family(_TOWER, True, True, "pooled", True),
    "siglip_vision_model": Family((*_TOWER, "vision_use_head"), True, False, "pooled", True),
    "dinov2": Family((*_TRANSFORMER, "mlp_ratio", "hidden_dropout_prob", "attention_probs_dropout_prob",
                      "qkv_bias", "layerscale_value", "drop_path_rate", "use_swiglu_ffn", "use_mask_token"),
                     True, True, "pooled", False),
    "convnext": Family((*_CONV, "patch_size", "num_stages", "layer_norm_eps", "layer_scale_init_value",
                        "drop_path_rate", "image_size"), False, False, "pooled", False),
    "resnet": Family((*_CONV, "embedding_size", "layer_type", "downsample_in_first_stage",
                      "downsample_in_bottleneck"), False, False, "pooled", False),
}


def model_classes(model_type: str) -> tuple[type, type]:
    """(config class, model class) of an allowed model_type: a fixed table, never a lookup by name."""
    import transformers as hf

    table: dict[str, Callable[[], tuple[type, type]]] = {
        "vit": lambda: (hf.ViTConfig, hf.ViTModel),
        "deit": lambda: (hf.DeiTConfig, hf.DeiTModel),
        "clip_vision_model": lambda: (hf.CLIPVisionConfig, hf.CLIPVisionModel),
        "siglip_vision_model": lambda: (hf.SiglipVisionConfig, hf.SiglipVisionModel),
        "dinov2": lambda: (hf.Dinov2Config, hf.Dinov2Model),
        "convnext": lambda: (hf.ConvNextConfig, hf.ConvNextModel),
        "resnet": lambda: (hf.ResNetConfig, hf.ResNetModel),
    }
    return table[model_type]()


def family_of(model: Any) -> Family:
    if not isinstance(model, dict):
        raise ValueError("hf_vision: the architecture (`model`) must be a mapping")
    model_type = model.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ValueError(f"hf_vision: unknown model_type {model_type!r}; allowed: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def check_architecture(model: Any) -> dict[str, Any]:
    """Refuse any key outside the family's, any value outside its bounds, and sizes past the
    token and parameter budgets; returns the complete architecture (defaults filled in)."""
    family = family_of(model)
    unexpected = sorted(set(model) - {"model_type", *family.keys})
    if unexpected:
        raise ValueError(f"hf_vision: unexpected architecture keys {unexpected} for {model['model_type']}")
    for key in family.keys:
        if key in model:
            LIMITS[key].check(key, model[key])
    config_class, _ = model_classes(model["model_type"])
    defaults = config_class(**{k: v for k, v in model.items() if k != "model_type"})
    complete = {"model_type": model["model_type"], **{k: _plain(getattr(defaults, k)) for k in family.keys}}
    for key in family.keys:
        LIMITS[key].check(key, complete[key])
    _check_budget(complete, family)
    return complete


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check_budget(model: dict[str, Any], family: Family) -> None:
    if family.tokens:
        hidden, heads = model["hidden_size"], model["num_attention_heads"]
        if hidden % heads:
            raise ValueError(f"hf_vision: hidden_size {hidden} is not a multiple of {heads} heads")
        tokens = (model["image_size"] // model["patch_size"]) ** 2
        if not tokens:  # a patch bigger than the image: the embedding's convolution cannot run
            raise ValueError(f"hf_vision: patch_size {model['patch_size']} is larger than image_size "
                             f"{model['image_size']}")
        if tokens > MAX_TOKENS:
            raise ValueError(f"hf_vision: {tokens} patches per image exceed {MAX_TOKENS}")
    elif len(model["hidden_sizes"]) != len(model["depths"]):
        raise ValueError("hf_vision: hidden_sizes and depths must have the same length")
    count = estimated_parameters(model, family)
    if count > MAX_PARAMETERS:
        raise ValueError(f"hf_vision: about {count:.2e} parameters exceed the {MAX_PARAMETERS:.1e} allowed")


def estimated_parameters(model: dict[str, Any], family: Family) -> int:
    """An upper estimate from the sizes alone (nothing is built)."""
    if family.tokens:
        hidden = model["hidden_size"]
        inner = model.get("intermediate_size") or int(model["mlp_ratio"] * hidden * 1.5)
        patch = model["num_channels"] * model["patch_size"] ** 2 * hidden
        return model["num_hidden_layers"] * (4 * hidden**2 + 2 * hidden * inner) + patch
    # a 3x3 ResNet block pair (18 C^2) bounds ConvNeXt's 8 C^2 + 49 C and a bottleneck's
    return sum(18 * width**2 * depth for width, depth in zip(model["hidden_sizes"], model["depths"],
                                                             strict=True))


def check_stored(config: Any) -> dict[str, Any]:
    """The adapter config as stored in a safetensors header, checked key by key."""
    if not isinstance(config, dict):
        raise ValueError("hf_vision: the stored config must be a mapping")
    unexpected = sorted(set(config) - set(STORED_KEYS))
    if unexpected:
        raise ValueError(f"hf_vision: unexpected config keys {unexpected}; allowed: {list(STORED_KEYS)}")
    model = check_architecture(config.get("model"))
    family = FAMILIES[model["model_type"]]
    channels = model["num_channels"]
    side = Limit(int, 8, MAX_SIDE)
    shape = config.get("input_shape")
    if not isinstance(shape, list) or len(shape) != 3 or shape[2] != channels:
        raise ValueError(f"hf_vision: input_shape must be [H, W, {channels}], got {shape!r}")
    side.check("input height", shape[0])
    side.check("input width", shape[1])
    if family.tokens and (shape[0] // model["patch_size"]) * (shape[1] // model["patch_size"]) > MAX_TOKENS:
        raise ValueError(f"hf_vision: {shape[:2]} inputs make more than {MAX_TOKENS} patches")
    if family.fixed_size and shape[:2] != [model["image_size"]] * 2:
        raise ValueError(f"hf_vision: a {model['model_type']} takes {model['image_size']}px inputs, "
                         f"the processor gives {shape[:2]}")
    _check_statistics(config.get("mean"), config.get("std"), channels)
    pooling = check_pooling(config.get("pooling"), model)
    feature_dim = features_of(model, pooling)
    if config.get("feature_dim", feature_dim) != feature_dim:
        raise ValueError(f"hf_vision: feature_dim {config['feature_dim']} != the architecture's "
                         f"{feature_dim}")
    return {"model": model, "input_shape": list(shape), "mean": list(config["mean"]),
            "std": list(config["std"]), "pooling": pooling, "feature_dim": feature_dim}


def _check_statistics(mean: Any, std: Any, channels: int) -> None:
    for name, values, low in (("mean", mean, -10.0), ("std", std, 1e-6)):
        if not isinstance(values, list) or len(values) != channels:
            raise ValueError(f"hf_vision: {name} must list {channels} numbers, got {values!r}")
        for value in values:
            Limit(float, low, 10.0).check(name, value)


def check_pooling(pooling: Any, model: dict[str, Any]) -> str:
    family = FAMILIES[model["model_type"]]
    pooling = family.default_pooling if pooling is None else pooling
    if pooling not in POOLINGS:
        raise ValueError(f"hf_vision: pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "cls" and not family.cls:
        raise ValueError(f"hf_vision: a {model['model_type']} has no CLS token; use pooled or mean")
    if pooling == "pooled" and model.get("vision_use_head") is False:
        raise ValueError("hf_vision: this SigLIP tower has no pooling head; use mean")
    return pooling


def features_of(model: dict[str, Any], pooling: str) -> int:
    if not FAMILIES[model["model_type"]].tokens:
        return int(model["hidden_sizes"][-1])
    if pooling == "pooled" and "pooler_output_size" in model:
        return int(model["pooler_output_size"] or model["hidden_size"])
    return int(model["hidden_size"])
