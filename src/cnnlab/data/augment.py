"""Training-time augmentation.

The pipeline is a YAML list of torchvision.transforms.v2 entries. Two ways to run it:
- `BatchAugment` applies the transforms it knows to a whole batch at once with tensor ops, on the device
  that holds the data (the fast path: no per-sample Python, no torchvision import);
- `build_v2_pipeline` instantiates the entries for per-sample use in a DataLoader (any v2 transform).
"""

from __future__ import annotations

from typing import Sequence

import torch

from cnnlab.config.compose import instantiate_resolved
from cnnlab.data.batch_colour import ColorJitter
from cnnlab.data.batch_geometry import (RandomAffine, RandomCropPad, RandomErasing, RandomHorizontalFlip,
                                        RandomResizedCrop)
from cnnlab.data.transforms import lighting
from cnnlab.errors import ConfigError

V2_PREFIX = "torchvision.transforms.v2."
_V2 = V2_PREFIX


def _short_name(entry) -> str:
    target = entry.get("_target_") if hasattr(entry, "get") else None
    if not target:
        raise ConfigError(f"augment.transforms: every entry needs a _target_ (a torchvision.transforms.v2 class); got {dict(entry)!r}")
    return target[len(_V2):] if target.startswith(_V2) else target


BATCHED = {"RandomCrop": RandomCropPad, "RandomHorizontalFlip": RandomHorizontalFlip,
           "RandomAffine": RandomAffine, "RandomErasing": RandomErasing,
           "RandomResizedCrop": RandomResizedCrop, "ColorJitter": ColorJitter,
           lighting.TARGET: lighting.BatchLighting}  # cnnlab's own: keyed by the whole _target_


def batched_unsupported(transforms: Sequence) -> list[str]:
    """Names of entries the batched path cannot run (so the DataLoader path must)."""
    missing = []
    for entry in transforms:
        name = _short_name(entry)
        if name not in BATCHED:
            missing.append(name)
            continue
        try:
            _build_batched(name, entry)
        except NotImplementedError as unsupported:
            missing.append(f"{name}({unsupported})")
    return missing


def _build_batched(name, entry):
    kwargs = {k: v for k, v in entry.items() if not str(k).startswith("_")}
    try:
        return BATCHED[name](**kwargs)
    except TypeError as bad:
        raise ConfigError(f"augment.transforms: {name} got bad arguments {kwargs}: {bad}") from None


class BatchAugment:
    """The pipeline as batched tensor ops, applied to float images in [0, 255] before normalisation."""

    def __init__(self, transforms: Sequence):
        self.ops = [_build_batched(_short_name(e), e) for e in transforms]

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for op in self.ops:
            x = op(x, generator)
        return x


def build_v2_pipeline(transforms: Sequence):
    """Instantiate the entries as a per-sample torchvision.transforms.v2.Compose (DataLoader path)."""
    from torchvision.transforms import v2  # torchvision costs ~1 s at start-up: only the DataLoader path needs it

    built = []
    for i, entry in enumerate(transforms):
        name = _short_name(entry)
        try:
            built.append(instantiate_resolved(entry, f"augment.transforms.{i}"))
        except ConfigError:
            raise
        except Exception as bad:  # Hydra wraps import and argument errors; name the entry either way
            raise ConfigError(f"augment.transforms: cannot build {name!r}: {bad}") from None
    return v2.Compose(built)
