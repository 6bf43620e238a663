"""The user's own images: `root/<class>/<image>` trees, classes named by their folders.

Images are decoded (grayscale or RGB, as data.in_channels says) and brought to data.input_size once:
held in memory as one uint8 tensor when the set fits `data.memory_limit_mb` (then the fast path applies),
else decoded per sample by DataLoader workers. Unreadable files stop the run with the file's name, or are
skipped and counted when `data.skip_unreadable=true`.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from cnnlab.errors import ConfigError
from cnnlab.seeding import transform_sample

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class UnreadableImage(ValueError):
    """An image file that neither torchvision.io nor Pillow can decode."""


def class_name(folder_name: str) -> str:
    """A folder's name as a class name every writer accepts (JSON, YAML, TensorBoard, the console).

    Bytes that are not UTF-8 (which Python keeps as lone surrogates) are written as \\xNN escapes, so the
    name stays readable and distinct; `class_folders` maps it back to the folder on disk.
    """
    return os.fsencode(folder_name).decode("utf-8", "backslashreplace")


def class_folders(root: Path) -> dict[str, str]:
    """Class name -> folder name of each class sub-folder of `root`, sorted by folder name."""
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    return {class_name(name): name for name in names}


def find_classes(root: Path, key: str) -> list[str]:
    if not root.is_dir():
        raise ConfigError(f"{key}={root} is not a folder (resolved to {root.resolve()}); it should hold one "
                          f"sub-folder of images per class")
    classes = list(class_folders(root))
    if not classes:
        raise ConfigError(f"{key}={root} has no class sub-folders; expected {root}/<class name>/<image files>")
    return classes


def images_under(folder: Path) -> list[Path]:
    """Image files (by extension) anywhere under `folder`, in a stable order; none if it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


def list_images(root: Path, classes: list[str], key: str, require_all: bool) -> tuple[list[Path], list[int]]:
    """Image files (recursively) under each class folder, in a stable order, with their class indices."""
    files, labels, empty = [], [], []
    folders = class_folders(root) if root.is_dir() else {}
    for index, name in enumerate(classes):
        folder = root / folders.get(name, name)
        found = images_under(folder)
        if not found:
            empty.append(name)
        files += found
        labels += [index] * len(found)
    if not files:
        raise ConfigError(f"{key}={root} holds no image files ({', '.join(EXTENSIONS)}) in its class folders")
    if empty and require_all:
        raise ConfigError(f"{key}={root}: class folder(s) {', '.join(empty)} hold no image files; remove them or "
                          f"add images (accepted: {', '.join(EXTENSIONS)})")
    return files, labels


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


def decode(path: Path, channels: int) -> torch.Tensor:
    """uint8 (C, H, W) with C = channels (1: grayscale, 3: RGB), whatever the file stores (Pillow decodes)."""
    from PIL import Image  # only image folders and cnnlab-predict decode files

    try:
        with Image.open(path) as image:
            if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit integers, floats: scaled to 8 bits
                image = Image.fromarray(to_8_bit(np.asarray(image), image.mode == "F"), "L")
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except Exception as bad:  # Pillow raises many types for damaged files
        raise UnreadableImage(f"cannot read image {path}: {bad}") from None
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def fit_to_size(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Bring one image to `size`: scale the shorter side and crop the centre, or stretch to fit."""
    from torchvision.transforms.v2 import functional as TF  # torchvision costs ~1 s at start-up; only resizing needs it

    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if mode == "stretch":
        return TF.resize(image, list(size), antialias=True)
    h, w = image.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    resized = TF.resize(image, [max(size[0], round(h * scale)), max(size[1], round(w * scale))], antialias=True)
    return TF.center_crop(resized, list(size))


def read_image(path: Path, channels: int, size, resize_mode: str) -> torch.Tensor:
    """One file as the model sees it before augmentation: decoded to `channels`, brought to `size`."""
    return fit_to_size(decode(path, channels), size, resize_mode)


class ImageFiles(Dataset):
    """Per-sample decoding for folders too large to hold in memory (DataLoader path).

    With skip=True an unreadable file yields None, which `collate_skipping` drops and counts.
    """

    def __init__(self, files, labels, channels: int, size, resize_mode: str, skip: bool, transform=None,
                 seed: int = 0):
        self.files, self.labels = list(files), torch.as_tensor(labels, dtype=torch.long)
        self.channels, self.size, self.resize_mode, self.skip = channels, tuple(size), resize_mode, skip
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, None)  # (index, epoch) from EpochSampler
        try:
            x = read_image(self.files[i], self.channels, self.size, self.resize_mode)
        except UnreadableImage as bad:
            if self.skip:
                return None
            raise UnreadableImage(f"{bad}; set data.skip_unreadable=true to skip and count such files") from None
        return transform_sample(self.transform, x, self.seed, epoch, i), self.labels[i]


def collate_skipping(batch):
    """default_collate over the readable samples, plus how many were skipped."""
    kept = [item for item in batch if item is not None]
    x, y = default_collate(kept) if kept else (None, None)
    return x, y, len(batch) - len(kept)


def load_all(files, labels, channels: int, size, resize_mode: str, skip: bool, key: str):
    """Decode every file up front into one uint8 tensor."""
    def one(path):
        try:
            return read_image(path, channels, size, resize_mode)
        except UnreadableImage as bad:
            return bad

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
        decoded = list(pool.map(one, files))
    bad = [(path, result) for path, result in zip(files, decoded) if isinstance(result, UnreadableImage)]
    if bad and not skip:
        raise ConfigError(f"{key}: {bad[0][1]}" + (f" (and {len(bad) - 1} more unreadable files)" if len(bad) > 1 else "")
                          + "; set data.skip_unreadable=true to skip and count unreadable files")
    if bad:
        log.warning("%s: skipped %d unreadable image file(s), e.g. %s", key, len(bad), bad[0][0])
    keep = [i for i, result in enumerate(decoded) if not isinstance(result, UnreadableImage)]
    if not keep:
        raise ConfigError(f"{key}: none of the {len(files)} image files could be read")
    images = torch.stack([decoded[i] for i in keep])
    return images, torch.as_tensor([labels[i] for i in keep], dtype=torch.long), len(bad)
