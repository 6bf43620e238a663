"""Values measured on the training split: the mean/std that normalise the data, and Lighting's RGB PCA (cached in
the run dir)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import OmegaConf

from cnnlab.data.imagefolder import ImageFiles
from cnnlab.data.sources import Pool, SourceData
from cnnlab.data.transforms import lighting
from cnnlab.errors import ConfigError

if TYPE_CHECKING:
    from cnnlab.data.bundle import DataInfo

log = logging.getLogger("cnnlab.data.build")  # build_data's logger, as its messages were named


def measure_mean_std(pool: Pool, source: SourceData, info: DataInfo, seed: int, limit: int = 2000):
    """Per-channel mean and std of the training images (at most `limit` of them, drawn with the seed),
    accumulated in chunks so a large input size does not need all of them in memory at once."""
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
    total = torch.zeros(info.in_channels, dtype=torch.float64)
    squares = torch.zeros(info.in_channels, dtype=torch.float64)
    count = 0
    for x in _image_chunks(pool, source, info, pick):
        x = x.to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ConfigError("data: no readable training image to measure data.mean / data.std from")
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-6).sqrt()
    mean, std = [round(v, 4) for v in mean.tolist()], [round(max(v, 1e-3), 4) for v in std.tolist()]
    log.info("data.mean=%s data.std=%s measured on %d training images", mean, std, len(pick))
    return mean, std


def _image_chunks(pool: Pool, source: SourceData, info: DataInfo, pick: list[int], size: int = 128):
    """The uint8 images at `pick`, `size` at a time (files decoded; unreadable ones left out)."""
    files = None
    if not pool.resident:
        files = ImageFiles(pool.files, pool.labels, info.in_channels, info.input_size, source.resize_mode, skip=True)
    for start in range(0, len(pick), size):
        chunk = pick[start:start + size]
        if files is None:
            yield pool.rows(chunk)
            continue
        kept = [item[0] for item in (files[i] for i in chunk) if item is not None]
        if kept:
            yield torch.stack(kept)


def with_lighting_pca(transforms: list, pool: Pool, source: SourceData, info: DataInfo, seed: int, cache_dirs,
                       write: bool, limit: int = 2000) -> list:
    """The transforms with every Lighting entry that leaves eigval/eigvec null given the training split's RGB
    PCA: read from lighting_pca.json in `cache_dirs` when it was computed for this very training split, else
    computed (every resident training image; up to `limit` decoded ones drawn with the seed) and written to
    the first of `cache_dirs` (when `write`: rank 0)."""
    wanted = [i for i, e in enumerate(transforms) if hasattr(e, "get") and e.get("_target_") == lighting.TARGET
              and (e.get("eigval") is None or e.get("eigvec") is None)]
    if not wanted:
        return transforms
    if info.in_channels != 3:
        raise ConfigError(f"augment.transforms[{wanted[0]}]._target_={lighting.TARGET}: AlexNet's PCA lighting "
                          f"needs RGB images, but data.in_channels={info.in_channels}; remove it from the pipeline")
    fingerprint = _training_fingerprint(pool, info)
    files = [Path(d) / lighting.PCA_FILE for d in cache_dirs]
    pca = lighting.cached_pca(files, fingerprint)
    if pca is not None:
        log.info("augment: Lighting reuses the training split's RGB PCA from %s: eigval %s", pca["path"],
                 [round(v, 5) for v in pca["eigval"]])
    else:
        pick = list(range(len(pool))) if pool.resident else \
            torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
        eigval, eigvec = lighting.rgb_pca(_image_chunks(pool, source, info, pick, size=512))
        pca = {"eigval": eigval, "eigvec": eigvec}
        where = ""
        if files and write:
            lighting.save_pca(files[0], eigval, eigvec, fingerprint)
            where = f", saved in {files[0]}"
        log.info("augment: Lighting's RGB PCA of %d training images: eigval %s%s", len(pick),
                 [round(v, 5) for v in eigval], where)
    out = list(transforms)
    for i in wanted:
        entry = out[i]
        entry = OmegaConf.to_container(entry, resolve=True) if OmegaConf.is_config(entry) else dict(entry)
        out[i] = {**entry, "eigval": pca["eigval"], "eigvec": pca["eigvec"]}
    return out


def _training_fingerprint(pool: Pool, info: DataInfo) -> dict:
    """What identifies a training split for a cached PCA: its size and a digest of its labels and of a few of
    its images (or its file paths)."""
    digest = hashlib.sha256(pool.labels.cpu().numpy().tobytes())
    if pool.resident:
        digest.update(pool.rows(range(0, len(pool), max(1, len(pool) // 16))[:16]).cpu().contiguous().numpy().tobytes())
    else:
        digest.update("\n".join(str(f) for f in pool.files).encode())
    return {"data": info.name, "images": len(pool), "input_size": list(info.input_size),
            "digest": digest.hexdigest()[:20]}
