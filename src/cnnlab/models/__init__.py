"""The model zoo: a registry from the names used on the command line (`model=<name>`) to builders.

Every builder takes the data's shape (in_channels, num_classes, input_size) plus the entry's own keys
from configs/model/<name>.yaml, so one config line swaps architectures.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch.nn as nn

from cnnlab.errors import ConfigError

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(builder):
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = builder
        return builder
    return wrap


def build_model(cfg, in_channels: int, num_classes: int, input_size) -> nn.Module:
    """Build the zoo entry named by cfg.name, sized for the data; unknown names and keys list what is valid."""
    _import_zoo()
    name = cfg.get("name")
    if name not in MODELS:
        raise ConfigError(f"model.name={name!r} is not in the zoo; choose one of {', '.join(sorted(MODELS))}")
    if int(num_classes) < 1:
        raise ConfigError(f"data.num_classes={num_classes} must be at least 1")
    builder = MODELS[name]
    kwargs = {k: v for k, v in cfg.items() if k != "name" and not str(k).startswith("_")}
    accepted = set(inspect.signature(builder).parameters) - {"in_channels", "num_classes", "input_size"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"model {name!r} has no key(s) {', '.join('model.' + k for k in unknown)}; "
                          f"it accepts {', '.join(sorted(accepted)) or 'none'}")
    return builder(in_channels=int(in_channels), num_classes=int(num_classes), input_size=tuple(input_size), **kwargs)


def _import_zoo() -> None:
    # Importing the entry modules runs their @register decorators.
    from cnnlab.models import lenet  # noqa: F401
