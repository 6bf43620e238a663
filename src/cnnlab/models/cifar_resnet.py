"""CIFAR ResNets and their plain counterparts (He, Zhang, Ren, Sun 2015, "Deep residual learning for image
recognition", section 4.2).

6n+2 weighted layers: a 3x3 conv with 16 filters, three stages of n basic blocks (two 3x3 convs each) with
16, 32 and 64 filters, the first conv of stages 2 and 3 striding by 2, then global average pooling and a
fully connected layer. n = 3, 5, 7, 9, 18 gives ResNet-20/32/44/56/110.

Shortcuts: option A (the paper's CIFAR choice) is parameter-free: the identity, and where a block halves the
map and doubles the filters, every second pixel with the new channels zero-padded. Option B projects with a
1x1 conv + BN where the shape changes (identity elsewhere). The plain nets are the same stacks without any
shortcut, the baseline of the paper's degradation experiment.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.errors import ConfigError
from cnnlab.models import register
from cnnlab.models import layers

STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option A: subsample by `stride` and zero-pad the extra channels; no parameters."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.extra = planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra:
            # Pad the channel dim: split the new channels between both sides, as the reference implementations do.
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> act -> conv3x3 -> BN (+ shortcut) -> act."""

    def __init__(self, in_planes: int, planes: int, stride: int, activation: str, shortcut: str | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = layers.activation(activation)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = layers.activation(activation)
        if shortcut is None:  # plain network
            self.shortcut = None
        elif stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act2(out)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, activation: str = "relu",
                 shortcut: str | None = "A", zero_init_residual: bool = False):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ConfigError(f"CIFAR ResNet depth={depth} must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...)")
        if shortcut is not None and shortcut not in SHORTCUTS:
            raise ConfigError(f"model.shortcut={shortcut!r} is not accepted; choose one of {', '.join(SHORTCUTS)}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, STAGE_WIDTHS[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(STAGE_WIDTHS[0]), layers.activation(activation))
        stages, in_planes = [], STAGE_WIDTHS[0]
        for i, planes in enumerate(STAGE_WIDTHS):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, activation, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

        layers.he_init(self)
        if zero_init_residual:
            # Each residual branch then starts at zero, so every block begins as its shortcut.
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def _resnet(depth: int):
    def builder(in_channels: int, num_classes: int, input_size, activation: str = "relu",
                zero_init_residual: bool = False, shortcut: str = "A") -> nn.Module:
        return CifarResNet(depth, in_channels, num_classes, activation=activation, shortcut=str(shortcut).upper(),
                           zero_init_residual=bool(zero_init_residual))
    builder.__name__ = builder.__qualname__ = f"resnet{depth}"
    builder.__doc__ = f"ResNet-{depth} for CIFAR-sized inputs (n={(depth - 2) // 6} blocks per stage)."
    return builder


def _plain(depth: int):
    def builder(in_channels: int, num_classes: int, input_size, activation: str = "relu") -> nn.Module:
        return CifarResNet(depth, in_channels, num_classes, activation=activation, shortcut=None)
    builder.__name__ = builder.__qualname__ = f"plain{depth}"
    builder.__doc__ = f"Plain-{depth}: ResNet-{depth} without shortcuts (the degradation baseline)."
    return builder


for _depth in (20, 32, 44, 56, 110):
    globals()[f"resnet{_depth}"] = register(f"resnet{_depth}")(_resnet(_depth))
for _depth in (20, 56):
    globals()[f"plain{_depth}"] = register(f"plain{_depth}")(_plain(_depth))
del _depth
