"""Readers for the on-disk formats of the classic data sets, straight into uint8 (N, C, H, W) arrays.

The files are the ones torchvision downloads (same folder layout), but reading them here is faster than
going through torchvision's per-sample datasets and skips their whole-file checksum on every start.
CIFAR ships as Python pickles: they are read with an unpickler that can only build plain containers and
numpy arrays, so a crafted file cannot run code.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


class DataFileError(ValueError):
    """A data file exists but cannot be read as the format it should have."""


# --- MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST) -------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_maybe_gz(path: Path) -> bytes:
    data = Path(path).read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: magic 0x0000TTDD, D big-endian int32 dims, then the values), gzipped or not."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataFileError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFileError(f"{path}: header says {dims} values ({expected} bytes) but the file holds "
                            f"{len(raw) - header} bytes: truncated or corrupt")
    return np.frombuffer(bytearray(raw), dtype=dtype, offset=header).reshape(dims)  # writable, for torch


# --- CIFAR-10/100 python pickles ----------------------------------------------------------------------------

_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global (os.system & co.)."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a data file may only hold arrays and lists")


def read_data_pickle(path: Path) -> dict:
    """One CIFAR batch/meta file as a dict with str keys (the files were written by Python 2)."""
    try:
        with open(path, "rb") as f:
            obj = _DataOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as bad:
        raise DataFileError(f"{path} is not a readable CIFAR pickle: {bad}") from None
    if not isinstance(obj, dict):
        raise DataFileError(f"{path} should hold a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar(files: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate CIFAR batches: rows of 3072 bytes (R, G, B planes of 32x32) and their labels."""
    images, labels = [], []
    for path in files:
        batch = read_data_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise DataFileError(f"{path} lacks the 'data' or {label_key!r} entry of a CIFAR batch")
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch[label_key]):
            raise DataFileError(f"{path}: expected N rows of 3072 bytes and N labels, found {data.shape} "
                                f"and {len(batch[label_key])} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


# --- SVHN .mat files ------------------------------------------------------------------------------------------

def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's cropped-digit .mat: X is (32, 32, 3, N), y is (N, 1) with the digit 0 stored as label 10."""
    try:
        import scipy.io  # optional, and slow to import: only SVHN's files need it
    except ImportError:
        raise DataFileError("reading SVHN's .mat files needs scipy: pip install scipy") from None
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as bad:  # scipy raises several types for a damaged file
        raise DataFileError(f"{path} is not a readable SVHN .mat file: {bad}") from None
    if "X" not in mat or "y" not in mat:
        raise DataFileError(f"{path} lacks the X or y array of SVHN")
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8))
    labels = mat["y"].astype(np.int64).reshape(-1) % 10
    return images, labels


# --- STL-10 binary files --------------------------------------------------------------------------------------

def read_stl10(images_file: Path, labels_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """STL-10: 96x96x3 images stored column-major per channel, labels 1..10 as bytes."""
    raw = np.fromfile(images_file, dtype=np.uint8)
    if raw.size % (3 * 96 * 96):
        raise DataFileError(f"{images_file}: {raw.size} bytes is not a whole number of 96x96x3 images")
    images = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))
    labels = np.fromfile(labels_file, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != len(images):
        raise DataFileError(f"{labels_file} has {len(labels)} labels for {len(images)} images in {images_file}")
    return images, labels
