"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) as in the paper, and a variant for 28/32-pixel images."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError

from cnnlab.models import register
from cnnlab.models.layers import LocalResponseNorm, swap_relu


def _lrn() -> nn.LocalResponseNorm:
    # The paper's constants: n=5, alpha=1e-4, beta=0.75, k=2; in fp32 under autocast (cnnlab.models.layers)
    return LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)


class AlexNet(nn.Module):
    """conv 96@11x11/4 -> LRN -> pool 3/2 -> conv 256@5x5 -> LRN -> pool 3/2 -> conv 384, 384, 256 @3x3 -> pool 3/2
    -> dropout, fc 4096 -> dropout, fc 4096 -> fc classes. Overlapping 3x3 stride-2 pooling throughout.

    `groups=2` splits conv2, conv4 and conv5 into two halves as the paper's two-GPU training did
    (60,965,224 parameters at 1000 classes); the default single-group form has 62,378,344.
    """

    def __init__(self, in_channels=3, num_classes=1000, input_size=(227, 227), groups: int = 1, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4), nn.ReLU(inplace=True), _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups), nn.ReLU(inplace=True), _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        features = _flat_size(self.features, in_channels, input_size)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(features, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNetSmall(nn.Module):
    """AlexNet's design (5 convs, LRN after the first two, overlapping pooling, dropout FC head) scaled to
    28/32-pixel inputs: 5x5 stride-1 first conv, 64-192-384-256-256 filters, two FC layers of 1024.

    For the paper's ablations: `conv34=False` removes conv3 and conv4 (conv5 then takes conv2's 192 maps);
    `fc_hidden` is the number of hidden FC layers (2 = FC6 and FC7; 0 = the features feed the output layer)."""

    def __init__(self, in_channels=3, num_classes=10, input_size=(32, 32), dropout: float = 0.5,
                 conv34: bool = True, fc_hidden: int = 2):
        super().__init__()
        middle = [nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                  nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True)] if conv34 else []
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=5, padding=2), nn.ReLU(inplace=True), _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *middle,
            nn.Conv2d(256 if conv34 else 192, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        width = _flat_size(self.features, in_channels, input_size)
        head = []
        for _ in range(fc_hidden):
            head += [nn.Dropout(dropout), nn.Linear(width, 1024), nn.ReLU(inplace=True)]
            width = 1024
        self.classifier = nn.Sequential(*head, nn.Linear(width, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _flat_size(features: nn.Module, in_channels: int, input_size) -> int:
    """Length of the flattened feature map, from a shape-only pass on the meta device."""
    shape_only = copy.deepcopy(features).to("meta")
    with torch.no_grad():
        out = shape_only(torch.empty(1, in_channels, *input_size, device="meta"))
    return out.numel()


@register("alexnet")
def alexnet(in_channels: int, num_classes: int, input_size, groups: int = 1, dropout: float = 0.5,
            activation: str = "relu") -> nn.Module:
    return swap_relu(AlexNet(in_channels, num_classes, input_size, groups=groups, dropout=dropout), activation)


@register("alexnet_small")
def alexnet_small(in_channels: int, num_classes: int, input_size, dropout: float = 0.5,
                  activation: str = "relu", conv34: bool = True, fc_hidden: int = 2) -> nn.Module:
    if not 0 <= fc_hidden <= 4:
        raise ConfigError(f"model.fc_hidden={fc_hidden} must be between 0 and 4 (2 = AlexNet's FC6 and FC7)")
    return swap_relu(AlexNetSmall(in_channels, num_classes, input_size, dropout=dropout, conv34=conv34,
                                  fc_hidden=fc_hidden), activation)
