"""The geometric transforms of the batched augmentation path: v2's crops, flip, affine and erasing as tensor ops
on a whole batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError


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


def uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (hi - lo) + lo


def box_tries(n: int, h: int, w: int, scale, log_ratio, generator, device, tries: int = 10):
    """`tries` boxes per image, drawn as torchvision draws them: an area fraction uniform in `scale` of the h x w
    image and an aspect ratio log-uniform in `log_ratio`; returns the sides sqrt(area * ratio) and
    sqrt(area / ratio), rounded, each (n, tries)."""
    area = uniform(n * tries, *scale, generator, device).view(n, tries) * (h * w)
    aspect = torch.exp(uniform(n * tries, *log_ratio, generator, device)).view(n, tries)
    return torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()


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
        angle = uniform(n, *self.degrees, generator, device)
        if self.translate is not None:
            max_dx, max_dy = self.translate[0] * w, self.translate[1] * h
            tx = uniform(n, -max_dx, max_dx, generator, device).round()
            ty = uniform(n, -max_dy, max_dy, generator, device).round()
        else:
            tx = ty = zeros
        scale = uniform(n, *self.scale, generator, device) if self.scale is not None else zeros + 1.0
        shear_x = uniform(n, self.shear[0], self.shear[1], generator, device) if self.shear else zeros
        shear_y = uniform(n, self.shear[2], self.shear[3], generator, device) if self.shear and len(self.shear) == 4 else zeros
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
        eh, ew = box_tries(n, h, w, self.scale, self.log_ratio, generator, device)
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


def _interpolation(value, allowed: tuple[str, ...]) -> str:
    mode = str(value).lower().split(".")[-1]  # "bilinear", "InterpolationMode.BILINEAR"
    if mode not in allowed:
        raise NotImplementedError(f"interpolation {value}")
    return mode


class RandomResizedCrop:
    """v2.RandomResizedCrop on a batch: a box of random area and aspect ratio per image, drawn as torchvision's
    make_params draws it (10 tries, then the central crop), every box resized to `size` at once.

    Bilinear boxes go through one grid_sample at the source positions torch's interpolate uses, clamped to
    the box's edge pixels as interpolate clamps: equal to torchvision's resized_crop up to float rounding.
    torchvision antialiases when a box is larger than the output; grid_sample cannot, so with antialias on,
    the boxes that shrink are resized one by one with interpolate(antialias=True), as torchvision does. They
    only exist when the image is larger than `size`; with `size: ${data.input_size}` (the presets) the image
    already has that size and every box is at most the output, so the per-image step never runs.
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), interpolation="bilinear",
                 antialias=True):
        self.size = _pair(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        self.mode = _interpolation(interpolation, ("bilinear", "nearest"))
        self.antialias = bool(antialias) and self.mode == "bilinear"  # torchvision ignores it for nearest

    def _fallback(self, h: int, w: int) -> tuple[int, int]:
        """torchvision's box when no try fits: the whole image, cut to the nearest end of the ratio range."""
        in_ratio = w / h
        if in_ratio < min(self.ratio):
            return int(round(w / min(self.ratio))), w
        if in_ratio > max(self.ratio):
            return h, int(round(h * max(self.ratio)))
        return h, w

    def sample(self, n: int, h: int, w: int, generator, device) -> dict[str, torch.Tensor]:
        """Per-image box (top, left, height, width) in pixels; `fitted` is False where the fallback was taken."""
        bw, bh = box_tries(n, h, w, self.scale, self.log_ratio, generator, device)
        fits = (bw > 0) & (bw <= w) & (bh > 0) & (bh <= h)
        first = torch.argmax(fits.int(), dim=1)  # the first try that fits, as torchvision's loop stops there
        pick = torch.arange(n, device=device)
        fitted = fits.any(dim=1)
        fh, fw = self._fallback(h, w)
        bh = torch.where(fitted, bh[pick, first], fh)
        bw = torch.where(fitted, bw[pick, first], fw)
        top = (torch.rand(n, generator=generator, device=device) * (h - bh + 1)).floor().long()
        left = (torch.rand(n, generator=generator, device=device) * (w - bw + 1)).floor().long()
        top = torch.where(fitted, top, (h - fh) // 2)
        left = torch.where(fitted, left, (w - fw) // 2)
        return dict(top=top, left=left, height=bh, width=bw, fitted=fitted)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        return self.apply(x, self.sample(n, h, w, generator, x.device))

    def apply(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self._nearest(x, p) if self.mode == "nearest" else self._bilinear(x, p)
        out_h, out_w = self.size
        if self.antialias and (x.shape[2] > out_h or x.shape[3] > out_w):  # only then can a box shrink
            out = self._antialiased(x, p, out)
        return out

    def _source(self, start, length, out_len: int, dtype):
        """interpolate's bilinear source positions (align_corners=False), clamped to the box: (n, out_len)."""
        j = torch.arange(out_len, device=start.device, dtype=dtype)
        scale = (length.to(dtype) / out_len)[:, None]
        pos = start.to(dtype)[:, None] + (j[None, :] + 0.5) * scale - 0.5
        return torch.minimum(torch.maximum(pos, start.to(dtype)[:, None]), (start + length - 1).to(dtype)[:, None])

    def _bilinear(self, x: torch.Tensor, p) -> torch.Tensor:
        n, _, h, w = x.shape
        out_h, out_w = self.size
        # pixel positions -> grid_sample's [-1, 1] coordinates (align_corners=False)
        gx = (2 * self._source(p["left"], p["width"], out_w, x.dtype) + 1) / w - 1
        gy = (2 * self._source(p["top"], p["height"], out_h, x.dtype) + 1) / h - 1
        grid = torch.stack([gx[:, None, :].expand(n, out_h, out_w), gy[:, :, None].expand(n, out_h, out_w)], dim=3)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _nearest(self, x: torch.Tensor, p) -> torch.Tensor:
        n, c, h, w = x.shape
        out_h, out_w = self.size

        def index(start, length, out_len):  # interpolate's "nearest": floor(j * in/out) in float32
            j = torch.arange(out_len, device=x.device, dtype=torch.float32)[None, :]
            step = (j * (length.float() / out_len)[:, None]).floor().long()
            return start[:, None] + torch.minimum(step, (length - 1)[:, None])

        rows, cols = index(p["top"], p["height"], out_h), index(p["left"], p["width"], out_w)
        flat = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, -1).expand(n, c, out_h * out_w)
        return x.reshape(n, c, -1).gather(2, flat).view(n, c, out_h, out_w)

    def _antialiased(self, x: torch.Tensor, p, out: torch.Tensor) -> torch.Tensor:
        out_h, out_w = self.size
        shrinks = ((p["height"] > out_h) | (p["width"] > out_w)).nonzero().flatten().tolist()
        for i in shrinks:
            t, l, bh, bw = (int(p[k][i]) for k in ("top", "left", "height", "width"))
            out[i] = F.interpolate(x[i:i + 1, :, t:t + bh, l:l + bw], size=self.size, mode="bilinear",
                                   align_corners=False, antialias=True)[0]
        return out
