"""What TensorBoard's Projector tab shows: the penultimate-layer features of test images.

The features are the input of the model's last `nn.Linear` (the classifier head), caught by a forward pre-hook,
so any zoo model with a linear head works without knowing its layout. With them come the true and predicted
labels and a small thumbnail of each image for the sprite. The samples are spread over the whole test split
rather than its first N, which may hold only the first classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.engine.metrics import hard_labels

log = logging.getLogger("cnnlab")

THUMBNAIL_PX = 32  # sprite tiles: 1000 images fit a 1024-px sprite; larger inputs are shrunk to this


@dataclass
class Features:
    """Rows of one embedding: features (N, D), labels and predictions (N,), thumbnails (N, C, h, w) still
    normalised as the model saw them."""

    features: torch.Tensor
    labels: torch.Tensor
    predicted: torch.Tensor
    thumbnails: torch.Tensor


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The classifier head: the last nn.Linear registered (zoo models register their head last)."""
    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


def thumbnails(images: torch.Tensor, px: int = THUMBNAIL_PX) -> torch.Tensor:
    """Shrink (N, C, H, W) so that neither side exceeds `px` (aspect kept), on the CPU."""
    h, w = images.shape[-2:]
    scale = px / max(h, w)
    if scale < 1:
        images = F.interpolate(images.float(), size=(max(1, round(h * scale)), max(1, round(w * scale))),
                               mode="area")
    return images.float().cpu()


def sample_stride(loader, max_samples: int) -> int:
    """Every how-many-th sample to take so that up to `max_samples` are spread over the whole loader: a split
    may be ordered by class (a class-ordered pool, an image folder), so its first N would miss classes."""
    try:
        total = len(loader) * int(loader.batch_size)
    except (TypeError, AttributeError):  # a plain iterable: take the first max_samples
        return 1
    return max(1, math.ceil(total / max_samples))


@torch.inference_mode()
def penultimate_features(model: nn.Module, loader: Iterable, max_samples: int) -> Features | None:
    """The head's input for up to `max_samples` samples spread evenly over `loader`, in eval mode; None (with a
    warning) when the model has no linear head to hook."""
    head = last_linear(model)
    if head is None:
        log.warning("no Projector embedding: %s has no nn.Linear layer whose input could be taken as features",
                    type(model).__name__)
        return None
    caught: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: caught.append(args[0].flatten(1).float().cpu()))
    was_training = model.training
    model.eval()
    stride = sample_stride(loader, max_samples)
    parts: dict[str, list[torch.Tensor]] = {"features": [], "labels": [], "predicted": [], "thumbnails": []}
    seen = taken = 0
    try:
        for x, y in loader:
            first = -seen % stride  # the batch's first sample on the stride, counted over the whole loader
            seen += len(x)
            x, y = x[first::stride][:max_samples - taken], y[first::stride][:max_samples - taken]
            if not len(x):
                continue
            caught.clear()
            out = model(x)
            logits = out if isinstance(out, torch.Tensor) else out[0]  # main head first (aux heads: training only)
            if len(caught) != 1:  # the head ran more than once per forward: rows would not match samples
                log.warning("no Projector embedding: the last nn.Linear of %s ran %d times in one forward pass",
                            type(model).__name__, len(caught))
                return None
            parts["features"].append(caught[0])
            parts["labels"].append(hard_labels(y).cpu())
            parts["predicted"].append(logits.argmax(dim=1).cpu())
            parts["thumbnails"].append(thumbnails(x))
            taken += len(x)
            if taken >= max_samples:
                break
    finally:
        hook.remove()
        model.train(was_training)
    if not taken:
        return None
    return Features(**{name: torch.cat(rows) for name, rows in parts.items()})
