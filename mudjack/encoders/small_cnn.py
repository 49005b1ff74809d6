"""A small CNN encoder for the embedded default (8×8 digits) and tiny tests."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from mudjack.encoders.base import EncoderAdapter, ImageConfig, register_adapter


class SmallCNNConfig(ImageConfig):
    width: Annotated[int, Field(ge=1, le=512)] = 32


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


@register_adapter("small_cnn")
class SmallCNNAdapter(EncoderAdapter):
    """conv(width) → conv(2·width) → pool → conv(feature_dim) → global average: feature_dim."""

    config_model = SmallCNNConfig

    def build_backbone(self) -> nn.Module:
        width = int(self.config["width"])
        channels = self.input_shape[2]
        return nn.Sequential(
            *_conv_block(channels, width),
            *_conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_block(2 * width, self.feature_dim),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
