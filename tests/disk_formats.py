"""Tiny copies of the classic data sets written in their real on-disk formats and torchvision's folder layout,
so the real reading code runs offline. Every writer returns the (images uint8 N,C,H,W, labels) it wrote."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def _images(n: int, c: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def _labels(n: int, k: int) -> np.ndarray:
    return np.arange(n) % k  # every class present, balanced


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        Path(f"{path}.gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def write_mnist_like(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20, gz: bool = False):
    """torchvision's <root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    out = {}
    for split, prefix, n, seed in (("train", "train", n_train, 1), ("test", "t10k", n_test, 2)):
        images, labels = _images(n, 1, 28, 28, seed), _labels(n, 10)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images[:, 0], gz)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), gz)
        out[split] = (images, labels)
    return out


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20):
    folder = root / "cifar-10-batches-py"
    train = []
    for b in range(1, 6):
        images, labels = _images(per_batch, 3, 32, 32, 10 + b), _labels(per_batch, 10)
        _pickle(folder / f"data_batch_{b}", {b"batch_label": b"training batch", b"data": images.reshape(per_batch, -1),
                                             b"labels": labels.tolist()})
        train.append((images, labels))
    images, labels = _images(n_test, 3, 32, 32, 20), _labels(n_test, 10)
    _pickle(folder / "test_batch", {b"data": images.reshape(n_test, -1), b"labels": labels.tolist()})
    _pickle(folder / "batches.meta", {b"label_names": [b"airplane"] * 10})
    return {"train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
            "test": (images, labels)}


def write_cifar100(root: Path, n_train: int = 300, n_test: int = 100):
    folder = root / "cifar-100-python"
    out = {}
    for split, n, seed in (("train", n_train, 30), ("test", n_test, 31)):
        images, labels = _images(n, 3, 32, 32, seed), _labels(n, 100)
        _pickle(folder / split, {b"data": images.reshape(n, -1), b"fine_labels": labels.tolist(),
                                 b"coarse_labels": (labels // 5).tolist()})
        out[split] = (images, labels)
    return out


def write_svhn(root: Path, n_train: int = 40, n_test: int = 20):
    """<root>/{train,test}_32x32.mat: X (32, 32, 3, N), y (N, 1) with digit 0 stored as 10."""
    import scipy.io

    out = {}
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 40), ("test", n_test, 41)):
        images, labels = _images(n, 3, 32, 32, seed), _labels(n, 10)
        stored = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
        scipy.io.savemat(str(root / f"{split}_32x32.mat"), {"X": images.transpose(2, 3, 1, 0), "y": stored})
        out[split] = (images, labels)
    return out


def write_stl10(root: Path, n_train: int = 50, n_test: int = 20):
    """<root>/stl10_binary/{train,test}_{X,y}.bin: each image's channels stored column-major, labels 1..10."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, seed in (("train", n_train, 50), ("test", n_test, 51)):
        images, labels = _images(n, 3, 96, 96, seed), _labels(n, 10)
        images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
        out[split] = (images, labels)
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)))
    return out


def write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 8, size=(20, 24),
                       mode: str = "RGB", seed: int = 0) -> dict[str, list[Path]]:
    """<root>/<class>/img_k.png|jpg with a class-dependent mean colour (learnable), PNGs and JPEGs mixed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        written[name] = []
        for i in range(per_class):
            base = 40 + 170 * k / max(1, len(classes) - 1)
            pixels = np.clip(rng.normal(base, 12, size=(*size, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, "RGB").convert(mode)
            path = folder / f"img_{i}.{'png' if i % 2 == 0 else 'jpg'}"
            image.save(path)
            written[name].append(path)
    return written
