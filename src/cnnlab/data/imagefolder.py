"""The user's own images: `root/<class>/<image>` trees, classes named by their folders.

Images are decoded (grayscale or RGB, as data.in_channels says) and brought to data.input_size by one function,
`decoding.read_pixels` (Pillow and numpy). A set whose decoded pixels fit `data.memory_limit_mb` is held in
memory: decoded once by worker processes into the decoded cache (`cnnlab.data.cache`) and memory-mapped by
every later run, or, with data.cache=false, decoded into this process's memory on each run. A larger set is
decoded per sample by DataLoader workers (`ImageFiles`), with the same function, so both give the same pixels.
Unreadable files stop the run with the file's name, or are skipped and counted when
`data.skip_unreadable=true`. The listing (`scan_listing`) walks the tree with os.scandir and stats each file
once: the cache is keyed by the files' sizes and modification times.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from cnnlab.data.decoding import INTEGER_DEPTHS, UnreadableImage, read_pixels, to_8_bit, value_depth  # noqa: F401
from cnnlab.errors import ConfigError
from cnnlab.engine.seeding import transform_sample

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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


def _suffix(name: str) -> str:
    """pathlib's PurePath.suffix of a file name, without building a Path (the listing does this per file)."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def scan_images(folder: Path) -> list[tuple[tuple[str, ...], int, int]]:
    """(relative parts, size, mtime_ns) of each image file anywhere under `folder`, sorted as Paths sort.

    One os.scandir walk and one stat per file (100,000 files in a fraction of a second, where Path.rglob and
    is_file took several): the same files as `sorted(p for p in folder.rglob("*") if p.suffix.lower() in
    EXTENSIONS and p.is_file())`: hidden names included, symlinks to files followed, symlinked directories not
    entered, unreadable sub-folders skipped.
    """
    found = []
    stack: list[tuple[str, tuple[str, ...]]] = [(os.fspath(folder), ())]
    while stack:
        path, parts = stack.pop()
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append((entry.path, parts + (entry.name,)))
                        elif _suffix(entry.name).lower() in EXTENSIONS and entry.is_file():
                            info = entry.stat()
                            found.append((parts + (entry.name,), info.st_size, info.st_mtime_ns))
                    except OSError:  # vanished or a broken link: not an image file
                        continue
        except (PermissionError, NotADirectoryError, FileNotFoundError):
            continue
    found.sort(key=lambda item: item[0])  # PurePath orders by its parts, not by the joined string
    return found


def images_under(folder: Path) -> list[Path]:
    """Image files (by extension) anywhere under `folder`, in a stable order; none if it is not a folder."""
    if not folder.is_dir():
        return []
    return [folder.joinpath(*parts) for parts, _, _ in scan_images(folder)]


@dataclass
class Listing:
    """The image files of one tree, in label order, with what the decoded cache keys on."""

    root: Path
    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    relative: list[str] = field(default_factory=list)    # path below root, '/'-joined
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)      # st_mtime_ns


def scan_listing(root: Path, classes: list[str], key: str, require_all: bool) -> Listing:
    """Image files (recursively) under each class folder, in a stable order, with their class indices, sizes
    and modification times (one stat each)."""
    listing, empty = Listing(root), []
    folders = class_folders(root) if root.is_dir() else {}
    for index, name in enumerate(classes):
        folder_name = folders.get(name, name)
        folder = root / folder_name
        found = scan_images(folder) if folder.is_dir() else []
        if not found:
            empty.append(name)
        for parts, size, mtime in found:
            listing.files.append(folder.joinpath(*parts))
            listing.relative.append("/".join((folder_name, *parts)))
            listing.sizes.append(size)
            listing.mtimes.append(mtime)
        listing.labels += [index] * len(found)
    if not listing.files:
        raise ConfigError(f"{key}={root} holds no image files ({', '.join(EXTENSIONS)}) in its class folders")
    if empty and require_all:
        raise ConfigError(f"{key}={root}: class folder(s) {', '.join(empty)} hold no image files; remove them or "
                          f"add images (accepted: {', '.join(EXTENSIONS)})")
    return listing


def list_images(root: Path, classes: list[str], key: str, require_all: bool) -> tuple[list[Path], list[int]]:
    """Image files (recursively) under each class folder, in a stable order, with their class indices."""
    listing = scan_listing(root, classes, key, require_all)
    return listing.files, listing.labels


def decode(path: Path, channels: int) -> torch.Tensor:
    """uint8 (C, H, W) with C = channels (1: grayscale, 3: RGB), whatever the file stores (Pillow decodes)."""
    return torch.from_numpy(np.array(read_pixels(path, channels).transpose(2, 0, 1)))


def read_image(path: Path, channels: int, size, resize_mode: str) -> torch.Tensor:
    """One file as the model sees it before augmentation: decoded to `channels`, brought to `size`. The same
    function (decoding.read_pixels) fills the decoded cache, so both paths give the same pixels."""
    return torch.from_numpy(np.array(read_pixels(path, channels, tuple(size), resize_mode).transpose(2, 0, 1)))


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


def check_unreadable(unreadable: dict[int, str], files, skip: bool, key: str) -> list[int] | None:
    """The rows to keep when some files could not be read (None: all were read). Without data.skip_unreadable
    the first unreadable file is an error naming it and how many more there are."""
    if not unreadable:
        return None
    bad = sorted(unreadable)
    if not skip:
        raise ConfigError(f"{key}: {unreadable[bad[0]]}" + (f" (and {len(bad) - 1} more unreadable files)"
                                                           if len(bad) > 1 else "")
                          + "; set data.skip_unreadable=true to skip and count unreadable files")
    log.warning("%s: skipped %d unreadable image file(s), e.g. %s", key, len(bad), files[bad[0]])
    keep = sorted(set(range(len(files))) - set(bad))
    if not keep:
        raise ConfigError(f"{key}: none of the {len(files)} image files could be read")
    return keep


def load_all(files, labels, channels: int, size, resize_mode: str, skip: bool, key: str):
    """Decode every file up front into one uint8 tensor, in this process's memory (no decoded cache)."""
    from cnnlab.data.cache import decode_in_memory

    decoded = decode_in_memory(files, channels, size, resize_mode, "data.cache=false")
    keep = check_unreadable(decoded.unreadable, files, skip, key)
    images, labels = torch.from_numpy(decoded.images), torch.as_tensor(labels, dtype=torch.long)
    if keep is None:
        return images, labels, 0
    index = torch.as_tensor(keep)
    return images[index], labels[index], len(files) - len(keep)
