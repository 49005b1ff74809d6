"""Encoder adapters, chosen by name; importing this package registers the built-in ones."""

from mudjack.encoders import hf_vision, resnet_cifar, small_cnn, text  # noqa: F401  (register their adapters)
from mudjack.encoders.base import (
    EncoderAdapter,
    ImageEncoder,
    adapter_names,
    freeze_batchnorm,
    get_adapter,
    has_batchnorm,
    import_encoder,
    load_encoder,
    load_patch_of,
    read_adapter,
    register_adapter,
    save_encoder,
    trainable_parameters,
)

__all__ = [
    "EncoderAdapter",
    "ImageEncoder",
    "adapter_names",
    "freeze_batchnorm",
    "has_batchnorm",
    "get_adapter",
    "import_encoder",
    "load_encoder",
    "load_patch_of",
    "read_adapter",
    "register_adapter",
    "save_encoder",
    "trainable_parameters",
]
