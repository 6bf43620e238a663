"""Training-time augmentation.

The pipeline is a YAML list of torchvision.transforms.v2 entries. Two ways to run it:
- `BatchAugment` applies the transforms it knows to a whole batch at once with tensor ops, on the device
  that holds the data (the fast path: no per-sample Python, no torchvision import);
- `build_v2_pipeline` instantiates the entries for per-sample use in a DataLoader (any v2 transform).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError

_V2 = "torchvision.transforms.v2."


def _short_name(entry) -> str:
    target = entry.get("_target_") if hasattr(entry, "get") else None
    if not target:
        raise ConfigError(f"augment.transforms: every entry needs a _target_ (a torchvision.transforms.v2 class); got {dict(entry)!r}")
    return target[len(_V2):] if target.startswith(_V2) else target


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = list(value)
    return (int(value[0]), int(value[0])) if len(value) == 1 else (int(value[0]), int(value[1]))


class RandomCropPad:
    """v2.RandomCrop(size, padding) on a batch: zero-pad, then an independent random window per image."""

    def __init__(self, size, padding=None, pad_if_needed=False, fill=0, padding_mode="constant"):
        if padding_mode != "constant":
            raise NotImplementedError("padding_mode")
        self.size = _pair(size)
        pad = 0 if padding is None else padding
        if not isinstance(pad, int):
            pad = list(pad)
            if len(pad) != 1 and len(set(pad)) != 1:
                raise NotImplementedError("asymmetric padding")
            pad = int(pad[0])
        self.padding = pad
        self.fill = float(fill)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p), value=self.fill)
        out_h, out_w = self.size
        max_y, max_x = h + 2 * p - out_h, w + 2 * p - out_w
        if max_y < 0 or max_x < 0:
            raise ConfigError(f"augment: RandomCrop size {self.size} is larger than the padded image ({h + 2 * p}x{w + 2 * p})")
        oy = torch.randint(0, max_y + 1, (n,), generator=generator, device=x.device)
        ox = torch.randint(0, max_x + 1, (n,), generator=generator, device=x.device)
        rows = (oy[:, None] + torch.arange(out_h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(out_w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        return x[batch, chan, rows, cols]


class RandomHorizontalFlip:
    """v2.RandomHorizontalFlip(p) on a batch: each image flips with probability p."""

    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(3), x)


BATCHED = {"RandomCrop": RandomCropPad, "RandomHorizontalFlip": RandomHorizontalFlip}


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
    from hydra.utils import instantiate
    from torchvision.transforms import v2

    built = []
    for entry in transforms:
        name = _short_name(entry)
        try:
            built.append(instantiate(entry, _convert_="all"))
        except Exception as bad:  # Hydra wraps import and argument errors; name the entry either way
            raise ConfigError(f"augment.transforms: cannot build {name!r}: {bad}") from None
    return v2.Compose(built)
