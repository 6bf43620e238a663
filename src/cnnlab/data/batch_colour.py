"""v2.ColorJitter as tensor ops on a whole batch (the batched augmentation path)."""

from __future__ import annotations

import math

import torch

from cnnlab.data.batch_geometry import uniform
from cnnlab.errors import ConfigError


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
            return uniform(n, *span, generator, device) if span else torch.full((n,), identity, device=device)

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
