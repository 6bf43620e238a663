"""Print the model-zoo table of docs/zoo.md: parameters, smallest accepted input, source.

Parameters are counted on the meta device (no memory, no init) at two standard settings: 1000 classes on
3x224x224 (ImageNet; 3x299x299 for Inception v3, 3x227x227 for the paper AlexNet) and 10 classes on 3x32x32
(CIFAR-10). The smallest input is the smallest square 3-channel image the entry accepts, found by the
inspector's shape trace and search that the zoo's input-size check uses (cnnlab.models.inspector.tracing).

    python scripts/zoo_table.py > /tmp/zoo.md
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab.errors import ConfigError  # noqa: E402
from cnnlab.models.inspector.tracing import builds_and_runs, smallest_square_input  # noqa: E402
from cnnlab.models import MODELS, _import_zoo  # noqa: E402

SOURCES = {
    "lenet5": "LeCun et al. 1998", "mlp": "Rosenblatt 1958; Rumelhart et al. 1986",
    "alexnet": "Krizhevsky et al. 2012", "alexnet_small": "after Krizhevsky et al. 2012",
    "alexnet_torchvision": "Krizhevsky 2014 (one weird trick), torchvision",
    "googlenet": "Szegedy et al. 2015", "inception_v3": "Szegedy et al. 2016",
    "densenet_bc100": "Huang et al. 2017", "convnet": "described in YAML", "convnet_exercise": "course exercise",
}


# model=torchvision / timm / hub build whatever model.arch or model.entry names: no fixed row to print.
BY_NAME = ("torchvision", "timm", "hub")


def source(name: str) -> str:
    if name in SOURCES:
        return SOURCES[name]
    if name.startswith("vgg"):
        return "Simonyan & Zisserman 2015"
    if name.startswith(("resnet", "plain")):
        return "He et al. 2016" if name[6:] in ("18", "34", "50", "101", "152") else "He et al. 2016 (CIFAR)"
    if name.startswith("densenet"):
        return "Huang et al. 2017"
    return ""


def params(name: str, size, classes: int, keys: dict) -> str:
    try:
        with torch.device("meta"):
            model = MODELS[name](in_channels=3, num_classes=classes, input_size=size, **keys)
        return f"{sum(p.numel() for p in model.parameters()):,}"
    except (ConfigError, RuntimeError):
        return "-"


def smallest(name: str, keys: dict, classes: int) -> str:
    def build(size):
        return MODELS[name](in_channels=3, num_classes=classes, input_size=tuple(size), **keys)

    side = smallest_square_input(lambda size: builds_and_runs(build, 3, size), limit=512)
    return "> 512" if side is None else f"{side}x{side}"


def main() -> None:
    _import_zoo()
    print("| `model=` | params (1000 classes, ImageNet size) | params (10 classes, 3x32x32) | smallest input | source |")
    print("|---|---|---|---|---|")
    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "model").glob("*.yaml")):
        entry = OmegaConf.to_container(OmegaConf.load(path))
        name = entry.pop("name")
        if name in BY_NAME:
            continue
        entry.pop("init", None)
        keys = {**entry, **({"aux_logits": False} if name == "inception_v3" else {})}
        classes = 4 if path.stem == "convnet_exercise" else 10  # the exercise's head is fixed at 4 units
        big = (299, 299) if name == "inception_v3" else (227, 227) if name == "alexnet" else (224, 224)
        print(f"| `{path.stem}` | {params(name, big, 1000, keys)} | {params(name, (32, 32), 10, keys)} | "
              f"{smallest(name, keys, classes)} | {source(path.stem)} |")


if __name__ == "__main__":
    main()
