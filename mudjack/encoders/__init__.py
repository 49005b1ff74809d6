"""Encoder adapters, chosen by name; importing this package registers the built-in ones."""

from mudjack.encoders import small_cnn  # noqa: F401  (registers "small_cnn")
from mudjack.encoders.base import (
    EncoderAdapter,
    ImageEncoder,
    adapter_names,
    freeze_batchnorm,
    get_adapter,
    load_encoder,
    register_adapter,
    save_encoder,
    trainable_parameters,
)

__all__ = [
    "EncoderAdapter",
    "ImageEncoder",
    "adapter_names",
    "freeze_batchnorm",
    "get_adapter",
    "load_encoder",
    "register_adapter",
    "save_encoder",
    "trainable_parameters",
]
