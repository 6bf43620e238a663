"""DenseNet-BC for CIFAR-sized inputs (Huang, Liu, van der Maaten, Weinberger 2017, "Densely connected
convolutional networks").

3x3 stem conv with 2k filters -> 3 dense blocks of (depth - 4) / 6 bottleneck layers each, joined by
transitions -> BN-ReLU-global average pool -> fc. A bottleneck layer is BN-ReLU-1x1 conv (4k) -> BN-ReLU-3x3
conv (k), its k new maps concatenated to its input; a transition is BN-ReLU-1x1 conv compressing the channels
by `compression` -> 2x2 average pool. Depth 100, k=12, compression 0.5 is the paper's DenseNet-BC (k=12),
0.8M parameters on CIFAR-10.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.errors import ConfigError
from cnnlab.models import layers, register


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, growth_rate: int, dropout: float):
        super().__init__()
        inter = 4 * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, inter, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inter)
        self.conv2 = nn.Conv2d(inter, growth_rate, 3, padding=1, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        out = self.conv2(F.relu(self.bn2(out)))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, dropout: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.relu(self.bn(x)))
        if self.dropout:
            out = F.dropout(out, self.dropout, self.training)
        return F.avg_pool2d(out, 2, ceil_mode=True)  # ceil: odd maps (7x7 from 28x28 inputs) keep their border


class DenseNetBC(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, growth_rate: int = 12, depth: int = 100,
                 compression: float = 0.5, dropout: float = 0.0):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"model.depth={depth!r} must be 6n+4 with n >= 1 (DenseNet-BC: 40, 100, 190, ...)")
        if isinstance(growth_rate, bool) or not isinstance(growth_rate, int) or growth_rate < 1:
            raise ConfigError(f"model.growth_rate={growth_rate!r} must be a positive integer")
        if not 0.0 < float(compression) <= 1.0:
            raise ConfigError(f"model.compression={compression!r} must be in (0, 1]")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"model.dropout={dropout!r} must be in [0, 1)")
        n = (depth - 4) // 6  # bottleneck layers per block: each has two convs, plus stem, 2 transitions, fc
        planes = 2 * growth_rate
        feats: list[nn.Module] = [nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(n):
                feats.append(Bottleneck(planes, growth_rate, float(dropout)))
                planes += growth_rate
            if block < 2:
                out_planes = int(math.floor(planes * float(compression)))
                feats.append(Transition(planes, out_planes, float(dropout)))
                planes = out_planes
        feats += [nn.BatchNorm2d(planes), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*feats)
        self.fc = nn.Linear(planes, num_classes)

        layers.he_init(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@register("densenet_bc100")
def densenet_bc100(in_channels: int, num_classes: int, input_size, growth_rate: int = 12, depth: int = 100,
                   compression: float = 0.5, dropout: float = 0.0) -> nn.Module:
    return DenseNetBC(in_channels, num_classes, growth_rate=growth_rate, depth=depth, compression=compression,
                      dropout=dropout)
