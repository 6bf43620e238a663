"""Classifying image files with a trained checkpoint: the work of `cnnlab-predict` (cnnlab.cli.predict) and of the
Python API's Run.predict. Each image is converted to the training data's channels, resized to its input size and
normalised with its mean/std, all taken from the config saved inside the checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab.data.loaders import Normalize
from cnnlab.engine.devices import resolve_device
from cnnlab.engine.checkpoint import find_checkpoint
from cnnlab.errors import ConfigError
from cnnlab.data.image_input import image_files, in_memory_image, load_image
from cnnlab.run.weights import load_trained_model


PREDICT_BATCH = 256  # images decoded and classified together


def predict(ckpt: str, images: list, topk: int = 3, device: str = "auto",
            trusted_repos: tuple[str, ...] = ()) -> list[dict]:
    """The top-k labels of each image: files (str or Path), directories (every image under them) and, from Python,
    images in memory (PIL images, uint8 arrays), which a result names by their position in `images`."""
    if topk < 1:
        raise ConfigError(f"--topk={topk} must be at least 1")
    images = _inputs(images)
    target = resolve_device(device, key="--device")
    path, saved = find_checkpoint(ckpt, "checkpoint")
    loaded = load_trained_model(path, target, ckpt=saved, trusted_repos=trusted_repos)
    info = loaded.info
    mode = loaded.data.image_resize_mode()
    normalize = Normalize(info.mean, info.std, target)
    chunks = []
    for start in range(0, len(images), PREDICT_BATCH):  # a whole directory need not fit in memory at once
        batch = torch.stack([load_image(p, info.in_channels, info.input_size, mode) if isinstance(p, Path)
                             else in_memory_image(p[1], info.in_channels, info.input_size, mode)
                             for p in images[start:start + PREDICT_BATCH]]).to(target)
        with torch.inference_mode():
            chunks.append(loaded.model(normalize(batch.float())).float().softmax(dim=1).cpu())
    probs = torch.cat(chunks)
    k = min(topk, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    results = []
    for path, vals, idxs in zip(images, values.tolist(), indices.tolist()):
        results.append({"image": str(path) if isinstance(path, Path) else path[0], "top": [{"label": info.classes[i], "index": i, "prob": v}
                                                     for v, i in zip(vals, idxs)]})
    return results


def _inputs(images: list) -> list:
    """Each file as a Path (a directory as the image files under it), each image in memory as (its position, it)."""
    found = []
    for position, item in enumerate(images):
        if isinstance(item, (str, Path)):
            found += image_files([str(item)])
        else:
            found.append((position, item))
    return found
