"""Small building blocks shared by zoo entries: activations and pooling chosen by name, local response
normalisation."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "silu": lambda: nn.SiLU(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "gelu": nn.GELU,
}

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class LocalResponseNorm(nn.LocalResponseNorm):
    """torch's LocalResponseNorm, computed from fp32 inputs with autocast off when the forward pass runs under
    autocast. Measured (docs/benchmarks.md, "accuracy parity"): with LRN in bf16, AlexNet-small trained a
    seed-for-seed 4-24 points worse than fp32 (0.81 against 0.94 mean test accuracy over 3 seeds); with LRN in
    fp32 and the rest in bf16, 0.93, as fp32. It costs one cast of the two small maps it normalises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "meta" or not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def activation(name: str, key: str = "model.activation") -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"{key}={name!r} is not accepted; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def pool(name: str, kernel_size: int, stride: int | None = None, key: str = "model.pool") -> nn.Module:
    if name not in POOLS:
        raise ConfigError(f"{key}={name!r} is not accepted; choose one of {', '.join(POOLS)}")
    return POOLS[name](kernel_size, stride)


def he_init(model: nn.Module) -> None:
    """The CIFAR papers' initialisation: He et al. 2015 (fan-out, ReLU) for convolutions, batch norm at
    unit scale and zero shift."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def swap_relu(model: nn.Module, name: str, key: str = "model.activation") -> nn.Module:
    """Replace every nn.ReLU module by the named activation (for torchvision models whose ReLUs are modules)."""
    if name == "relu":
        return model
    activation(name, key)  # validates the name
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, activation(name, key))
    return model
