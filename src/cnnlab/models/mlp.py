"""The multilayer perceptron baseline: flatten the image, then fully connected hidden layers."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError
from cnnlab.models import register
from cnnlab.models import layers


class MLP(nn.Module):
    """flatten -> [Linear -> (BatchNorm1d) -> activation -> (Dropout)] per hidden width -> Linear(classes)."""

    def __init__(self, in_features: int, num_classes: int, hidden=(512, 256), activation: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"model.dropout={dropout!r} must be in [0, 1)")
        blocks: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for i, h in enumerate(hidden):
            if isinstance(h, bool) or not isinstance(h, int) or h < 1:
                raise ConfigError(f"model.hidden[{i}]={h!r} must be a positive integer")
            blocks.append(nn.Linear(width, h, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm1d(h))
            blocks.append(layers.activation(activation))
            if dropout > 0:
                blocks.append(nn.Dropout(float(dropout)))
            width = h
        blocks.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register("mlp")
def mlp(in_channels: int, num_classes: int, input_size, hidden=(512, 256), activation: str = "relu",
        dropout: float = 0.0, batch_norm: bool = False) -> nn.Module:
    if hidden is None:
        hidden = ()
    if isinstance(hidden, (int, str)):
        raise ConfigError(f"model.hidden={hidden!r} must be a list of layer widths, e.g. [512, 256] ([] for "
                          "logistic regression)")
    return MLP(in_channels * math.prod(input_size), num_classes, hidden=list(hidden), activation=activation,
               dropout=dropout, batch_norm=bool(batch_norm))
