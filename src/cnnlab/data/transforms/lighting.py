"""AlexNet's PCA colour augmentation, "lighting" (Krizhevsky et al. 2012, section 4.1; fb.resnet.torch's Lighting).

PCA of the RGB values of the training set's pixels (scaled to [0, 1]) gives eigenvalues lambda_i and
eigenvectors v_i; each image then gets sum_i alpha_i * lambda_i * v_i added to every pixel, with
alpha_i ~ N(0, alphastd) drawn per image and eigenvector. The shift is in [0, 1] units: x 255 on the
[0, 255] scale cnnlab augments on.

- `Lighting`: the per-sample transform (DataLoader path, inside a torchvision v2.Compose): alphas from torch's
  global RNG, which cnnlab seeds per sample; uint8 images are rounded and clamped to [0, 255], float images
  (torchvision's [0, 1]) clamped to [0, 1].
- `BatchLighting`: the same on a float batch in [0, 255] (fast path), clamped to [0, 255].
- `rgb_pca`: the eigen-decomposition, and `cached_pca` / `save_pca`: the run dir's `lighting_pca.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import torch

from cnnlab.errors import ConfigError
from cnnlab.util.outpaths import write_json

log = logging.getLogger(__name__)

TARGET = "cnnlab.data.transforms.Lighting"
PCA_FILE = "lighting_pca.json"


def _alphastd(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"augment.transforms: Lighting alphastd={value!r} must be a number >= 0 (0: no change)")
    return float(value)


def _pca_tensors(eigval, eigvec) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if eigval is None and eigvec is None:
        return None, None  # filled in by build_data from the training split
    if eigval is None or eigvec is None:
        raise ConfigError("augment.transforms: Lighting needs both eigval and eigvec, or neither (both null: "
                          "computed from the training split)")
    try:
        values = torch.tensor([float(v) for v in eigval], dtype=torch.float64)
        vectors = torch.tensor([[float(v) for v in row] for row in eigvec], dtype=torch.float64)
    except (TypeError, ValueError):
        values = vectors = None
    if values is None or values.shape != (3,) or vectors.shape != (3, 3):
        raise ConfigError(f"augment.transforms: Lighting eigval={eigval!r} / eigvec={eigvec!r} must be 3 numbers and a "
                          f"3x3 matrix whose column i is the eigenvector of eigval[i]")
    return values, vectors


def _need_rgb(channels: int) -> None:
    if channels != 3:
        raise ConfigError(f"augment.transforms: Lighting (AlexNet's PCA colour augmentation) needs RGB images, "
                          f"got {channels} channel(s); remove it for data.in_channels={channels}")


class Lighting:
    """Per-sample PCA lighting on a (3, H, W) image: uint8 in [0, 255] or float in [0, 1] (torchvision's ranges).

    eigval: the 3 eigenvalues of the RGB covariance of [0, 1] pixels; eigvec: 3x3, column i the eigenvector of
    eigval[i] (numpy.linalg.eigh's layout, and fb.resnet.torch's). build_data fills both from the training
    split when the config leaves them null; a transform built without them cannot be applied.
    """

    def __init__(self, alphastd: float = 0.1, eigval=None, eigvec=None):
        self.alphastd = _alphastd(alphastd)
        eigval, eigvec = _pca_tensors(eigval, eigvec)
        self.eigval = None if eigval is None else eigval.float()
        self.eigvec = None if eigvec is None else eigvec.float()

    def _pca(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.eigval is None:
            raise ConfigError("augment.transforms: Lighting has no eigval/eigvec: build_data computes them from the "
                              "training split; give them when building the transform yourself")
        return self.eigval, self.eigvec

    def shift(self, alpha: torch.Tensor) -> torch.Tensor:
        """The RGB shift in [0, 1] units for alphas (..., 3): sum_i alpha_i * lambda_i * v_i."""
        eigval, eigvec = self._pca()
        return (alpha.float() * eigval) @ eigvec.T

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _need_rgb(img.shape[-3])
        if self.alphastd == 0:
            return img
        return self.apply(img, torch.randn(3) * self.alphastd)

    def apply(self, img: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        _need_rgb(img.shape[-3])
        shift = self.shift(alpha).view(3, 1, 1)
        if img.dtype == torch.uint8:
            return (img.float() + 255.0 * shift).round_().clamp_(0, 255).to(torch.uint8)
        return (img + shift.to(img.dtype)).clamp(0, 1)

    def __repr__(self) -> str:
        values = None if self.eigval is None else [round(v, 6) for v in self.eigval.tolist()]
        return f"Lighting(alphastd={self.alphastd}, eigval={values})"


class BatchLighting(Lighting):
    """PCA lighting on a float batch (N, 3, H, W) in [0, 255]: one alpha triple per image, clamped to [0, 255]."""

    def sample(self, n: int, h: int, w: int, generator, device) -> dict[str, torch.Tensor]:
        return {"alpha": torch.randn(n, 3, generator=generator, device=device) * self.alphastd}

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _need_rgb(x.shape[1])
        if self.alphastd == 0:
            return x
        n, _, h, w = x.shape
        return self.apply(x, self.sample(n, h, w, generator, x.device))

    def apply(self, x: torch.Tensor, p) -> torch.Tensor:
        _need_rgb(x.shape[1])
        alpha = p["alpha"] if isinstance(p, dict) else p
        values, vectors = (t.to(x.device) for t in self._pca())
        shift = (alpha.to(x.device).float() * values) @ vectors.T  # (n, 3), as Lighting.shift
        return (x + (255.0 * shift).to(x.dtype)[:, :, None, None]).clamp_(0, 255)


def rgb_pca(chunks: Iterable[torch.Tensor]) -> tuple[list[float], list[list[float]]]:
    """Eigenvalues (descending) and eigenvectors (columns) of the RGB covariance of every pixel of the uint8
    (N, 3, H, W) chunks, pixels scaled to [0, 1]; sums in float64. Each eigenvector's sign is chosen so that
    its largest component (by magnitude) is positive: the same data always gives the same numbers."""
    total = torch.zeros(3, dtype=torch.float64)
    outer = torch.zeros(3, 3, dtype=torch.float64)
    count = 0
    for chunk in chunks:
        _need_rgb(chunk.shape[1])
        pixels = chunk.to(torch.float64).div_(255.0).permute(1, 0, 2, 3).reshape(3, -1)
        total += pixels.sum(dim=1)
        outer += pixels @ pixels.T
        count += pixels.shape[1]
    if count == 0:
        raise ConfigError("augment.transforms: Lighting found no training image to compute the RGB PCA from")
    mean = total / count
    return eigen(outer / count - torch.outer(mean, mean))


def eigen(covariance: torch.Tensor) -> tuple[list[float], list[list[float]]]:
    """(eigenvalues, descending; eigenvectors as the columns of a 3x3 list) of a symmetric 3x3 covariance."""
    values, vectors = torch.linalg.eigh(covariance.to(torch.float64))
    values, vectors = values.flip(0).clamp_min(0.0), vectors.flip(1)
    largest = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[largest, torch.arange(3)])
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    return values.tolist(), vectors.tolist()


def cached_pca(paths: Iterable[Path], fingerprint: dict) -> dict | None:
    """The first of `paths` holding a PCA computed for this very training split (same fingerprint), or None."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") == fingerprint:
                _pca_tensors(saved["eigval"], saved["eigvec"])  # well-formed
                return {"eigval": saved["eigval"], "eigvec": saved["eigvec"], "path": str(path)}
        except (OSError, ValueError, KeyError, AttributeError, ConfigError):
            pass
        log.info("%s was computed for other training images (or is unreadable): not used", path)
    return None


def save_pca(path: Path, eigval, eigvec, fingerprint: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json({"eigval": eigval, "eigvec": eigvec, "fingerprint": fingerprint,
                "about": "RGB covariance of the training images' pixels in [0, 1]; eigvec column i belongs to "
                         "eigval[i] (cnnlab.data.transforms.Lighting)"}, Path(path))
