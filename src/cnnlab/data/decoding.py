"""One image file -> uint8 pixels at the model's input size, with Pillow and numpy only (no torch).

The one function both image-folder paths share: the decoded cache's worker processes (forked, where torch ops
are unsafe) and the per-sample DataLoader path both call `read_pixels`, so both give the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class UnreadableImage(ValueError):
    """An image file that Pillow cannot decode."""


# The depths an integer image's values are scaled from, chosen by its largest value: 8-bit data kept in a 16-bit
# file, the 12 bits of most camera, microscope and medical sensors, and 16 bits. Above 16 bits, the bit length of
# the largest value. docs/data.md ("Images that are not 8-bit") explains the choice.
INTEGER_DEPTHS = (8, 12, 16)


def value_depth(top: float) -> int:
    """The bits an integer image's values are scaled from, given its largest value."""
    for bits in INTEGER_DEPTHS:
        if top <= 2 ** bits - 1:
            return bits
    return int(top).bit_length()


def to_8_bit(values: np.ndarray, floating: bool) -> np.ndarray:
    """A one-channel image of 16- or 32-bit integers or floats as uint8 0..255, scaled by the range its values
    use: floats in [0, 1] times 255, floats in [0, 255] as they are, anything larger (integers always) by the
    depth of its largest value (value_depth). Negative values and NaN become 0."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if values.size else 0.0
    if floating and top <= 1.0:
        scale = 1.0
    elif floating and top <= 255.0:
        scale = 255.0
    else:
        scale = float(2 ** value_depth(top) - 1)
    return np.clip(values / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _as_channels(image, channels: int):
    """A Pillow image as mode L (channels=1) or RGB, deeper-than-8-bit data scaled to 8 bits first."""
    from PIL import Image

    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit integers, floats: scaled to 8 bits
        image = Image.fromarray(to_8_bit(np.asarray(image), image.mode == "F"), "L")
    return image.convert("L" if channels == 1 else "RGB")


def _fit(image, size: tuple[int, int], mode: str):
    """Bring a Pillow image to size (height, width): `stretch` resizes to it; `center_crop` scales the shorter side
    and crops the centre (torchvision's rounding of the scaled sides and of the crop offsets). Bilinear with
    Pillow's antialiasing (its filter widens when shrinking)."""
    from PIL import Image

    height, width = size
    w, h = image.size
    if (h, w) == (height, width):
        return image
    if mode == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = int(round((new_h - height) / 2.0)), int(round((new_w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def read_pixels(path: Path | str, channels: int, size: tuple[int, int] | None = None,
                mode: str = "center_crop") -> np.ndarray:
    """uint8 (H, W, C) with C = channels (1: grayscale, 3: RGB), whatever the file stores, brought to `size`
    (height, width) by `mode` when given. A JPEG much larger than `size` is decoded at 1/2, 1/4 or 1/8 scale by
    the JPEG decoder itself (Pillow's draft mode, never below `size`): several times faster for large photos."""
    from PIL import Image  # only image folders and cnnlab-predict decode files

    try:
        with Image.open(path) as image:
            if size is not None:
                image.draft(None, (int(size[1]), int(size[0])))
            return image_pixels(image, channels, size, mode)
    except Exception as bad:  # Pillow raises many types for damaged files
        raise UnreadableImage(f"cannot read image {path}: {bad}") from None


def image_pixels(image, channels: int, size: tuple[int, int] | None = None, mode: str = "center_crop") -> np.ndarray:
    """A decoded PIL image as read_pixels gives a file's: uint8 (H, W, C), `channels`, brought to `size` by `mode`."""
    image = _as_channels(image, channels)
    if size is not None:
        image = _fit(image, (int(size[0]), int(size[1])), mode)
    pixels = np.asarray(image)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels
