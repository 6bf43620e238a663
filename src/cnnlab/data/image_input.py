"""The user's own image files as a trained model's input (cnnlab-predict, cnnlab-explain).

Files and folders named on the command line become a list of image files; each file is decoded to the
training data's channel count and input size. Anything missing or unreadable is a ConfigError naming the file.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.data.imagefolder import EXTENSIONS, UnreadableImage, images_under, read_image
from cnnlab.errors import ConfigError
from cnnlab.util.outpaths import file_kind, input_file


def load_image(path: Path, in_channels: int, size: tuple[int, int], resize_mode: str = "stretch"):
    """A (C, H, W) uint8 tensor in the model's channel count and input size, prepared as training images were
    (an image folder's resize_mode; the resident sets were resized to exactly the input size)."""
    input_file(path, f"image {path}")
    try:
        return read_image(path, in_channels, size, resize_mode)
    except UnreadableImage as bad:
        raise ConfigError(f"image {path} cannot be read as an image: {bad}") from None


def in_memory_image(image, in_channels: int, size: tuple[int, int], resize_mode: str = "stretch"):
    """A PIL image or a uint8 array (H x W, or H x W x 1/3/4) already in memory as load_image gives a file's."""
    import numpy as np
    import torch
    from PIL import Image

    from cnnlab.data.decoding import image_pixels

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ConfigError(f"an image given as an array is uint8 H x W or H x W x 1/3/4 (pixel values 0..255), "
                              f"not {image.dtype} of shape {image.shape}")
        image = Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    try:
        pixels = image_pixels(image, in_channels, tuple(size), resize_mode)
    except Exception as bad:  # Pillow's conversions raise many types for modes they cannot convert
        raise ConfigError(f"an image of mode {getattr(image, 'mode', '?')} cannot be converted: {bad}") from None
    return torch.from_numpy(np.array(pixels.transpose(2, 0, 1)))


def image_files(paths: list[str]) -> list[Path]:
    """The files named: each file as given, each directory as the image files under it (sorted)."""
    files = []
    for given in paths:
        path = Path(given).expanduser()
        kind = file_kind(path)  # stat() only: a FIFO is named, never opened
        if kind == "dir":
            found = images_under(path)
            if not found:
                raise ConfigError(f"{given} is a directory with no image files in it (looked for "
                                  f"{', '.join(EXTENSIONS)}, in sub-folders too)")
            files += found
        elif kind == "missing":
            raise ConfigError(f"image {given}: no such file or directory")
        elif kind != "file":
            raise ConfigError(f"image {given} is {kind}, not an image file or a directory of them")
        else:
            files.append(path)
    return files
