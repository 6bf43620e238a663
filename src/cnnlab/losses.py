"""Losses from the classic curriculum, all taking logits and integer (or one-/multi-hot) targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F




def one_hot_targets(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Integer labels -> one-hot rows; already-dense targets (multi-hot, mixed) pass through."""
    if target.ndim == 2:
        return target.to(dtype)
    return F.one_hot(target, num_classes).to(dtype)


class Loss:
    """Callable loss(logits, target). Dense 2-D targets (e.g. from mixup) work with every loss."""

    def __init__(self, name: str, label_smoothing: float = 0.0):
        # name is one of cnnlab.schema.Loss and 0 <= label_smoothing < 1: the schema checked the config
        self.name = name
        self.smoothing = float(label_smoothing)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.name == "cross_entropy":
            if target.ndim == 2:
                target = target.to(logits.dtype)
            return F.cross_entropy(logits, target, label_smoothing=self.smoothing)
        dense = one_hot_targets(target, logits.shape[1], logits.dtype)
        if self.smoothing:  # the same smoothed targets cross-entropy uses: (1 - s) one-hot + s / classes
            dense = dense * (1.0 - self.smoothing) + self.smoothing / logits.shape[1]
        if self.name == "bce":
            return F.binary_cross_entropy_with_logits(logits, dense)
        # mse: the quadratic cost of the early literature, between class probabilities and one-hot targets.
        return F.mse_loss(logits.softmax(dim=1), dense)
