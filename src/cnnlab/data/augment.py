"""Training-time augmentation.

The pipeline is a YAML list of torchvision.transforms.v2 entries. Two ways to run it:
- `BatchAugment` applies the transforms it knows to a whole batch at once with tensor ops, on the device
  that holds the data (the fast path: no per-sample Python, no torchvision import);
- `build_v2_pipeline` instantiates the entries for per-sample use in a DataLoader (any v2 transform).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from cnnlab.config import instantiate_resolved
from cnnlab.errors import ConfigError

V2_PREFIX = "torchvision.transforms.v2."
_V2 = V2_PREFIX


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
        # One gather over the flattened padded image: ~6x faster on CPU than 4-D advanced indexing.
        row_len = w + 2 * p
        window = (torch.arange(out_h, device=x.device)[:, None] * row_len
                  + torch.arange(out_w, device=x.device)[None, :]).view(1, -1)
        index = ((oy * row_len + ox)[:, None] + window)[:, None, :].expand(n, c, out_h * out_w)
        return x.reshape(n, c, -1).gather(2, index).view(n, c, out_h, out_w)


class RandomHorizontalFlip:
    """v2.RandomHorizontalFlip(p) on a batch: each image flips with probability p."""

    def __init__(self, p=0.5):
        self.p = float(p)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(3), x)


def _range(value, name: str, symmetric: bool) -> tuple[float, float]:
    """A number d -> (-d, d) (or (d, d)); a pair -> itself, as torchvision reads its range arguments."""
    if isinstance(value, (int, float)):
        return (-float(value), float(value)) if symmetric else (float(value), float(value))
    value = [float(v) for v in value]
    if len(value) != 2:
        raise NotImplementedError(f"{name} with {len(value)} values")
    return value[0], value[1]


def _uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (hi - lo) + lo


class RandomAffine:
    """v2.RandomAffine on a batch: per-image angle, integer translation, scale and shear drawn as torchvision
    draws them, applied with one affine_grid + grid_sample (torchvision's matrix, pixel-centred coordinates)."""

    def __init__(self, degrees, translate=None, scale=None, shear=None, interpolation="nearest", fill=0, center=None):
        if center is not None:
            raise NotImplementedError("center")
        if not isinstance(fill, (int, float)) or fill != 0:
            raise NotImplementedError("fill other than 0")
        self.mode = str(interpolation).lower().split(".")[-1]
        if self.mode not in ("nearest", "bilinear"):
            raise NotImplementedError(f"interpolation {interpolation}")
        self.degrees = _range(degrees, "degrees", symmetric=True)
        self.translate = None if translate is None else tuple(float(t) for t in translate)
        self.scale = None if scale is None else _range(scale, "scale", symmetric=False)
        shear = None if shear is None else ([float(shear)] if isinstance(shear, (int, float)) else [float(v) for v in shear])
        if shear is not None and len(shear) not in (1, 2, 4):
            raise NotImplementedError(f"shear with {len(shear)} values")
        if shear is not None and len(shear) == 1:
            shear = [-abs(shear[0]), abs(shear[0])]
        self.shear = shear

    def sample(self, n: int, h: int, w: int, generator, device) -> dict[str, torch.Tensor]:
        """The per-image parameters (angle and shear in degrees, translation in whole pixels)."""
        zeros = torch.zeros(n, device=device)
        angle = _uniform(n, *self.degrees, generator, device)
        if self.translate is not None:
            max_dx, max_dy = self.translate[0] * w, self.translate[1] * h
            tx = _uniform(n, -max_dx, max_dx, generator, device).round()
            ty = _uniform(n, -max_dy, max_dy, generator, device).round()
        else:
            tx = ty = zeros
        scale = _uniform(n, *self.scale, generator, device) if self.scale is not None else zeros + 1.0
        shear_x = _uniform(n, self.shear[0], self.shear[1], generator, device) if self.shear else zeros
        shear_y = _uniform(n, self.shear[2], self.shear[3], generator, device) if self.shear and len(self.shear) == 4 else zeros
        return dict(angle=angle, tx=tx, ty=ty, scale=scale, shear_x=shear_x, shear_y=shear_y)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        return self.apply(x, self.sample(n, h, w, generator, x.device))

    def apply(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        n, _, h, w = x.shape
        rot, sx, sy = torch.deg2rad(p["angle"]), torch.deg2rad(p["shear_x"]), torch.deg2rad(p["shear_y"])
        # torchvision's rotate-scale-shear block and its inverse (_get_inverse_affine_matrix, centre 0)
        a = torch.cos(rot - sy) / torch.cos(sy)
        b = -(a * torch.tan(sx) + torch.sin(rot))
        c = torch.sin(rot - sy) / torch.cos(sy)
        d = torch.cos(rot) - c * torch.tan(sx)
        s = p["scale"]
        m00, m01, m10, m11 = d / s, -b / s, -c / s, a / s
        ox = -(m00 * p["tx"] + m01 * p["ty"])
        oy = -(m10 * p["tx"] + m11 * p["ty"])
        # pixel offsets from the centre -> grid_sample's [-1, 1] coordinates (align_corners=False)
        theta = torch.stack([
            torch.stack([m00, m01 * h / w, ox * 2 / w], dim=1),
            torch.stack([m10 * w / h, m11, oy * 2 / h], dim=1)], dim=1)
        grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], h, w], align_corners=False)
        return F.grid_sample(x, grid, mode=self.mode, padding_mode="zeros", align_corners=False)


class RandomErasing:
    """v2.RandomErasing on a batch (cutout): with probability p, a rectangle of random area and aspect ratio
    is set to `value`; like torchvision, up to 10 draws per image, no erasing when none fits."""

    def __init__(self, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0, inplace=False):
        if not isinstance(value, (int, float)):
            raise NotImplementedError("value other than a number")
        self.p, self.value = float(p), float(value)
        self.scale = (float(scale[0]), float(scale[1]))
        self.log_ratio = (math.log(float(ratio[0])), math.log(float(ratio[1])))

    def sample(self, n: int, h: int, w: int, generator, device) -> dict[str, torch.Tensor]:
        tries = 10
        area = _uniform(n * tries, *self.scale, generator, device).view(n, tries) * (h * w)
        aspect = torch.exp(_uniform(n * tries, *self.log_ratio, generator, device)).view(n, tries)
        eh = torch.sqrt(area * aspect).round().long()
        ew = torch.sqrt(area / aspect).round().long()
        fits = (eh < h) & (ew < w)
        first = torch.argmax(fits.int(), dim=1)  # first draw that fits (0 when none does; masked below)
        pick = torch.arange(n, device=device)
        eh, ew = eh[pick, first], ew[pick, first]
        top = (torch.rand(n, generator=generator, device=device) * (h - eh + 1)).floor().long()
        left = (torch.rand(n, generator=generator, device=device) * (w - ew + 1)).floor().long()
        erase = (torch.rand(n, generator=generator, device=device) < self.p) & fits.any(dim=1)
        return dict(erase=erase, top=top, left=left, height=eh, width=ew)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        return self.apply(x, self.sample(n, h, w, generator, x.device))

    def apply(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        _, _, h, w = x.shape
        rows = torch.arange(h, device=x.device)[None, :]
        cols = torch.arange(w, device=x.device)[None, :]
        in_rows = (rows >= p["top"][:, None]) & (rows < (p["top"] + p["height"])[:, None])
        in_cols = (cols >= p["left"][:, None]) & (cols < (p["left"] + p["width"])[:, None])
        box = in_rows[:, :, None] & in_cols[:, None, :] & p["erase"][:, None, None]
        return x.masked_fill(box[:, None], self.value)


BATCHED = {"RandomCrop": RandomCropPad, "RandomHorizontalFlip": RandomHorizontalFlip,
           "RandomAffine": RandomAffine, "RandomErasing": RandomErasing}


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
