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

from cnnlab.config.compose import instantiate_resolved
from cnnlab.data.transforms import lighting
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
        tries = 10
        area = _uniform(n * tries, *self.scale, generator, device).view(n, tries) * (h * w)
        aspect = torch.exp(_uniform(n * tries, *self.log_ratio, generator, device)).view(n, tries)
        bw = torch.sqrt(area * aspect).round().long()
        bh = torch.sqrt(area / aspect).round().long()
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


def _jitter_range(value, name: str, center: float, bound: tuple[float, float], clip_at_zero: bool = True):
    """torchvision's ColorJitter._check_input: v -> [center - v, center + v] (clipped at 0), a pair -> itself;
    None where the op would change nothing."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"augment.transforms: ColorJitter {name}={value} must be non-negative")
        lo, hi = center - float(value), center + float(value)
        lo = max(lo, 0.0) if clip_at_zero else lo
    else:
        value = [float(v) for v in value]
        if len(value) != 2:
            raise ConfigError(f"augment.transforms: ColorJitter {name}={value} must be a number or a pair")
        lo, hi = value
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ConfigError(f"augment.transforms: ColorJitter {name} range {[lo, hi]} must be increasing within {bound}")
    return None if lo == hi == center else (lo, hi)


BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # torchvision's fn_idx numbering


class ColorJitter:
    """v2.ColorJitter on float images in [0, 255]: per-image factors from torchvision's ranges, and per image
    a random order of the four ops, as torchvision draws one permutation per call. Round k applies each
    image's k-th op: brightness, contrast and saturation are all blends of the image with a reference (black,
    its mean grey, its grey image), so one pass serves all three; hue runs on the images whose turn it is.
    Each op clamps to [0, 255] as torchvision clamps floats to [0, 1]; on 1-channel images saturation and hue
    change nothing and contrast uses the image itself as grey, as in torchvision."""

    def __init__(self, brightness=None, contrast=None, saturation=None, hue=None):
        self.brightness = _jitter_range(brightness, "brightness", 1.0, (0.0, math.inf))
        self.contrast = _jitter_range(contrast, "contrast", 1.0, (0.0, math.inf))
        self.saturation = _jitter_range(saturation, "saturation", 1.0, (0.0, math.inf))
        self.hue = _jitter_range(hue, "hue", 0.0, (-0.5, 0.5), clip_at_zero=False)

    def sample(self, n: int, h: int, w: int, generator, device) -> dict[str, torch.Tensor]:
        """Per-image op order (n, 4) and factors; an op that is off gets the factor that leaves the image as is."""
        order = torch.argsort(torch.rand(n, 4, generator=generator, device=device), dim=1)

        def factor(span, identity):
            return _uniform(n, *span, generator, device) if span else torch.full((n,), identity, device=device)

        return dict(order=order, brightness=factor(self.brightness, 1.0), contrast=factor(self.contrast, 1.0),
                    saturation=factor(self.saturation, 1.0), hue=factor(self.hue, 0.0))

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        return self.apply(x, self.sample(n, h, w, generator, x.device))

    def apply(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        if x.shape[1] not in (1, 3):
            raise ConfigError(f"augment.transforms: ColorJitter needs 1- or 3-channel images, got {x.shape[1]}")
        rgb = x.shape[1] == 3
        active = [bool(self.brightness), bool(self.contrast), bool(self.saturation) and rgb, bool(self.hue) and rgb]
        order = p["order"]
        if not all(active):  # an op that changes nothing needs no round: each image's active ops move up, in order
            is_off = ~torch.tensor(active, device=order.device)[order]
            order = order.gather(1, torch.argsort(is_off.int(), dim=1, stable=True))[:, :sum(active)]
        for k in range(order.shape[1]):
            x = self._round(x, order[:, k], p)
        return x

    def _round(self, x: torch.Tensor, op: torch.Tensor, p) -> torch.Tensor:
        n, c, h, w = x.shape
        rgb = c == 3
        ones = torch.ones_like(p["brightness"])
        factor = torch.stack([p["brightness"], p["contrast"], p["saturation"] if rgb else ones, ones], dim=1)
        f = factor.gather(1, op[:, None]).view(n, 1, 1).to(x.dtype)  # 1 (the image unchanged): hue or off
        # Each blend x * f + (1 - f) * reference is affine in the pixel's colour: a per-image c x c matrix and
        # offset, so one baddbmm serves every image whichever blend is its turn.
        matrix = f * torch.eye(c, device=x.device, dtype=x.dtype)
        if self.saturation and rgb:  # reference: the grey image, a weighted sum of the channels
            grey_rows = torch.tensor(_GREY, device=x.device, dtype=x.dtype).expand(3, 3)
            matrix = matrix + ((1 - f) * (op == SATURATION).view(n, 1, 1)) * grey_rows
        offset = torch.zeros((), device=x.device, dtype=x.dtype).expand(n, c, 1)
        if self.contrast:  # reference: the mean grey
            offset = ((1 - f) * (op == CONTRAST).view(n, 1, 1) * _grey_mean(x).view(n, 1, 1)).expand(n, c, 1)
        out = torch.baddbmm(offset, matrix, x.reshape(n, c, h * w)).view(n, c, h, w).clamp_(0, 255)
        if self.hue and rgb:
            turn = (op == HUE).nonzero().flatten()
            if len(turn):
                out[turn] = _adjust_hue(out[turn] / 255, p["hue"][turn]) * 255
        return out


_GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _grey_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of the grey image per image, (n, 1, 1, 1): the grey weights applied to the channel means."""
    means = x.mean(dim=(2, 3))
    if x.shape[1] == 3:
        means = means @ torch.tensor(_GREY, device=x.device, dtype=x.dtype)[:, None]
    return means.view(-1, 1, 1, 1)


_HUE_OFFSETS = (5.0, 3.0, 1.0)  # where r, g and b sit on the hexagon of hue sectors


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue (RGB in [0, 1] -> HSV, hue + shift mod 1 -> RGB) with one shift per image.

    A hue shift keeps each pixel's max (V) and max - min (V * S), so the round trip is written in one step:
    channel = max - (max - min) * clamp(2 - |k - 2|, 0, 1), k = (hue * 6 + offset) mod 6 — the closed form of
    the six-sector HSV -> RGB table, with fewer passes over the image than going through HSV and back."""
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    span = maxc - minc
    inv = 1 / span.clamp_min(1e-12)  # grey pixels: span 0, the numerators below are 0 too
    # torchvision's sectors: max in r, else max in g, else b; hue * 6 in [-1, 5]
    h6 = torch.where(maxc == r, g - b, torch.where(maxc == g, b - r + 2 * span, r - g + 4 * span)) * inv
    offsets = torch.tensor(_HUE_OFFSETS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = h6[:, None] + (offsets + 6 * shift.to(x.dtype).view(-1, 1, 1, 1))
    k = k - 6 * torch.floor(k / 6)  # mod 6; k = 6 and k = 0 give the same ramp
    ramp = (2 - (k - 2).abs()).clamp_(0, 1)
    return maxc[:, None] - span[:, None] * ramp


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
