"""The classic torchvision data sets, read from torchvision's own folder layout under `data.root`.

`data.download=true` lets torchvision fetch and verify the files (the only network access cnnlab makes);
otherwise missing files give an error that lists the paths looked for and how to get them. The files are
then read whole, by cnnlab.data.formats, into one uint8 tensor per split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cnnlab.data import formats


@dataclass(frozen=True)
class SetLayout:
    folder: str                                   # sub-folder of data.root that torchvision creates
    files: dict[str, tuple[str, ...]]             # split -> the files that hold it
    read: Callable[[list[Path]], tuple[np.ndarray, np.ndarray]]
    torchvision_class: str
    download_kwargs: dict[str, dict]              # split -> keyword arguments selecting it in torchvision
    origin: str                                   # where the files come from, for the error message


def _idx(paths):
    images = formats.read_idx(paths[0])
    labels = formats.read_idx(paths[1]).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise formats.DataFileError(f"{paths[0]} should hold N 2-D images matching the N labels in {paths[1]}")
    return images[:, None], labels


def _mnist_like(folder, cls, origin):
    files = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    return SetLayout(f"{folder}/raw", files, _idx, cls, {"train": {"train": True}, "test": {"train": False}}, origin)


LAYOUTS = {
    "mnist": _mnist_like("MNIST", "MNIST", "http://yann.lecun.com/exdb/mnist/ (torchvision mirrors it)"),
    "fashion_mnist": _mnist_like("FashionMNIST", "FashionMNIST", "https://github.com/zalandoresearch/fashion-mnist"),
    "kmnist": _mnist_like("KMNIST", "KMNIST", "https://github.com/rois-codh/kmnist"),
    "cifar10": SetLayout(
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        lambda paths: formats.read_cifar(paths, "labels"), "CIFAR10",
        {"train": {"train": True}, "test": {"train": False}},
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it into data.root)"),
    "cifar100": SetLayout(
        "cifar-100-python", {"train": ("train",), "test": ("test",)},
        lambda paths: formats.read_cifar(paths, "fine_labels"), "CIFAR100",
        {"train": {"train": True}, "test": {"train": False}},
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (extract it into data.root)"),
    "svhn": SetLayout(
        ".", {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)},
        lambda paths: formats.read_svhn(paths[0]), "SVHN",
        {"train": {"split": "train"}, "test": {"split": "test"}},
        "http://ufldl.stanford.edu/housenumbers/ (the cropped digits, format 2)"),
    "stl10": SetLayout(
        "stl10_binary", {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin")},
        lambda paths: formats.read_stl10(paths[0], paths[1]), "STL10",
        {"train": {"split": "train"}, "test": {"split": "test"}},
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz (extract it into data.root)"),
}


class MissingFiles(FileNotFoundError):
    pass


def split_files(name: str, root: Path, split: str) -> list[Path]:
    """The files of one split; IDX files may also be kept gzipped (`<name>.gz`)."""
    layout = LAYOUTS[name]
    found, missing = [], []
    for file in layout.files[split]:
        path = root / layout.folder / file
        if not path.is_file() and Path(f"{path}.gz").is_file():
            path = Path(f"{path}.gz")
        (found if path.is_file() else missing).append(path)
    if missing:
        raise MissingFiles(_missing_message(name, root, missing))
    return found


def _missing_message(name: str, root: Path, missing: list[Path]) -> str:
    layout = LAYOUTS[name]
    shown = ", ".join(str(p) for p in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (f"data.name={name}: files not found under data.root={root} (resolved to {root.resolve()}): {shown}. "
            f"Run once with data.download=true to let torchvision fetch them into that folder, or get them from "
            f"{layout.origin} and place them as {root}/{layout.folder}/<files>; set data.root (or the CNNLAB_DATA "
            f"environment variable) if they are elsewhere")


def download(name: str, root: Path) -> None:
    """Let torchvision fetch, verify and extract the set into the layout read here."""
    import torchvision.datasets  # torchvision costs ~1 s at start-up: only data.download=true needs it

    layout = LAYOUTS[name]
    cls = getattr(torchvision.datasets, layout.torchvision_class)
    root.mkdir(parents=True, exist_ok=True)
    for kwargs in layout.download_kwargs.values():
        cls(str(root), download=True, **kwargs)


def read_split(name: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return LAYOUTS[name].read(split_files(name, root, split))
