"""CIFAR ResNets (He et al. 2016, the CIFAR variant): 3 stages of 16/32/64 channels,
option-A shortcuts (stride-2 subsampling plus zero channel padding), 64-d features.

The parameter names match the widely shared akamaster checkpoints, so their
`state_dict` loads once the `module.` prefix and the classifier are dropped.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mudjack.encoders.base import EncoderAdapter, ImageConfig, Side, Statistic, register_adapter

DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}  # depth -> blocks per stage
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class PadShortcut(nn.Module):
    """Option A: subsample by 2 and pad the new channels with zeros (no parameters)."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.pad = extra_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        changes = stride != 1 or c_in != c_out
        self.shortcut = PadShortcut(c_out - c_in) if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, 1)
        self.layer2 = self._stage(16, 32, blocks, 2)
        self.layer3 = self._stage(32, 64, blocks, 2)

    @staticmethod
    def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(c_in, c_out, stride)]
        layers += [BasicBlock(c_out, c_out, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return out.mean(dim=(2, 3))  # global average pool: the 64-d penultimate features


class ResNetCifarConfig(ImageConfig):
    depth: Literal[20, 32, 44, 56, 110]
    input_shape: tuple[Side, Side, Literal[3]] = (32, 32, 3)
    feature_dim: Literal[64] = 64
    mean: Statistic | None = IMAGENET_MEAN
    std: Statistic | None = IMAGENET_STD


@register_adapter("resnet_cifar")
class ResNetCifarAdapter(EncoderAdapter):
    """config: depth (20/32/44/56/110), input_shape [32, 32, 3], mean/std (ImageNet's by default)."""

    config_model = ResNetCifarConfig

    def build_backbone(self) -> nn.Module:
        return CifarResNet(DEPTHS[int(self.config["depth"])])
