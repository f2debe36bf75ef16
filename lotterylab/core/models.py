"""Model registry (MLP, 1-D CNN, CIFAR ResNets and VGG-16, torchvision ImageNet ResNets), `build` and Kaiming init."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from lotterylab.core.registry import MODELS

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Module types whose `weight` is prunable; masks rely on them and on their `named_modules()` order."""

if TYPE_CHECKING:
    from lotterylab.core.config import ModelConfig


MLP_WIDTH, MLP_DEPTH, CNN1D_WIDTH = 256, 2, 32
# VGG-16 conv widths, one tuple per stage; every stage ends in a 2x2 max-pool.
VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult))


def _image_channels(name: str, input_shape: tuple[int, ...]) -> int:
    """Input channels of an image model; anything but a (C, H, W) example shape is an error."""
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs a (C, H, W) example shape, got {tuple(input_shape)}")
    return input_shape[0]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; the shortcut is a 1x1 conv-BN where the shape changes (option B)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # Registered after conv2 so that named_modules() order matches the order the convs run in.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stride-1 stem, no max-pool, stages of BasicBlocks, global average pool."""

    def __init__(self, in_channels: int, widths: list[int], blocks: list[int], num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.fc(self.pool(out).flatten(1))  # (B, C, 1, 1) -> (B, C)


def _mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    width = cfg.width if cfg.width is not None else MLP_WIDTH
    depth = cfg.depth if cfg.depth is not None else MLP_DEPTH
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def _cnn1d(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 2:
        raise ValueError(f"model {cfg.name!r} needs a (C, L) example shape, got {tuple(input_shape)}")
    channels, length = input_shape
    width = cfg.width if cfg.width is not None else CNN1D_WIDTH
    # Flatten rather than global-pool: MNIST-1D digits are defined by where their features sit along L.
    reduced = math.ceil(math.ceil(length / 2) / 2)  # 'same' padding: each stride-2 conv maps L to ceil(L / 2)
    return nn.Sequential(
        nn.Conv1d(channels, width, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),  # (B, width, reduced) -> (B, width * reduced)
        nn.Linear(width * reduced, num_classes),
    )


def _resnet20(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    widths = [_scaled(c, cfg.width_mult) for c in (16, 32, 64)]
    return CifarResNet(_image_channels(cfg.name, input_shape), widths, [3, 3, 3], num_classes)


def _resnet18(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    widths = [_scaled(c, cfg.width_mult) for c in (64, 128, 256, 512)]
    return CifarResNet(_image_channels(cfg.name, input_shape), widths, [2, 2, 2, 2], num_classes)


def _vgg16(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels = _image_channels(cfg.name, input_shape)
    layers: list[nn.Module] = []
    for stage in VGG16_STAGES:
        for width in (_scaled(c, cfg.width_mult) for c in stage):
            # No conv bias: the BatchNorm that follows has its own shift.
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        # ceil_mode lets 28x28 inputs survive five halvings (28 -> 14 -> 7 -> 4 -> 2 -> 1).
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


def _torchvision_resnet(arch: str) -> Callable[[ModelConfig, tuple[int, ...], int], nn.Module]:
    def construct(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        import torchvision  # imported here so that `MODELS` (read by config validation) stays cheap to import

        channels = _image_channels(cfg.name, input_shape)
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if channels != 3:
            # Assigning the existing attribute keeps conv1 first in named_modules().
            model.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        return model

    return construct


MODELS.update({
    "mlp": _mlp,
    "cnn1d": _cnn1d,
    "resnet20": _resnet20,
    "resnet18": _resnet18,
    "resnet18_imagenet": _torchvision_resnet("resnet18"),
    "resnet50_imagenet": _torchvision_resnet("resnet50"),
    "vgg16": _vgg16,
})


UNPACKABLE: dict[str, str] = {}
"""Registered models that must train alone, each with the reason (lotterylab.training.packing.pack_key gives them no
key): a packed run must equal its solo run, and random draws inside a model (dropout) come from another stream under
vmap. tests/test_packing.py packs every other registered model in float64 against its solo run."""


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_in, ReLU) conv/linear weights with zero biases; BatchNorm weight 1, bias 0."""
    for module in model.modules():
        if isinstance(module, PRUNABLE_TYPES):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Construct the registered model `cfg.name` for this example shape and class count, then apply `cfg.init`."""
    model = MODELS.get_checked(cfg.name)(cfg, tuple(input_shape), num_classes)
    if cfg.init == "kaiming_normal":
        init_weights(model)
    return model
