"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning applied to document recognition")."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError
from cnnlab.models import register
from cnnlab.models import layers


class LeNet5(nn.Module):
    """C1 conv 6@5x5 -> S2 pool 2 -> C3 conv 16@5x5 -> S4 pool 2 -> C5 fc 120 -> F6 fc 84 -> output.

    The paper feeds 32x32 images; smaller inputs (28x28 MNIST) get padding in C1 so C5 still sees 16x5x5.
    C3 is fully connected to S2's maps (the paper's sparse connection table is a 1998 compute saving).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size=(32, 32),
                 activation: str = "tanh", pool: str = "avg"):
        super().__init__()
        h, w = input_size
        pad = max(0, (32 - min(h, w)) // 2)
        act, pl = layers.activation, layers.pool
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=pad), act(activation), pl(pool, 2),
            nn.Conv2d(6, 16, kernel_size=5), act(activation), pl(pool, 2),
        )
        fh, fw = _feature_size(h + 2 * pad), _feature_size(w + 2 * pad)
        if fh < 1 or fw < 1:
            raise ConfigError(f"lenet5 needs inputs of at least 16x16 (got {h}x{w}): the second 5x5 conv and pooling "
                              "leave nothing")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * fh * fw, 120), act(activation),
            nn.Linear(120, 84), act(activation),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _feature_size(n: int) -> int:
    # conv 5 (no pad) -> pool 2 -> conv 5 -> pool 2, using O = (W - K + 2P)/S + 1 at each layer.
    n = (n - 5) + 1
    n = n // 2
    n = (n - 5) + 1
    return n // 2


@register("lenet5")
def lenet5(in_channels: int, num_classes: int, input_size, activation: str = "tanh", pool: str = "avg") -> nn.Module:
    return LeNet5(in_channels, num_classes, input_size, activation=activation, pool=pool)
