"""Losses from the classic curriculum, all taking logits and integer (or one-/multi-hot) targets.

Class weights (trainer.class_weights) make a class's samples count more or less; every loss reduces to a
weighted mean, so a batch's loss keeps its scale and one-hot dense targets (an unmixed batch under
augment/mix) give exactly what their integer labels give. Each loss's formula: docs/data.md, "Class imbalance".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError

if TYPE_CHECKING:  # annotations only
    from cnnlab.config.training_schema import Trainer as TrainerSection

log = logging.getLogger("cnnlab")


def one_hot_targets(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Integer labels -> one-hot rows; already-dense targets (multi-hot, mixed) pass through."""
    if target.ndim == 2:
        return target.to(dtype)
    return F.one_hot(target, num_classes).to(dtype)


def resolve_class_weights(spec, counts: Sequence[int]) -> list[float] | None:
    """trainer.class_weights -> one weight per class, or None.

    `counts`: training images per class (after data.class_subset and data.max_per_class). `auto` gives
    scikit-learn's "balanced" weights n_samples / (n_classes * count_c): over the training set they average 1
    per image, so the loss keeps its unweighted scale and the learning rate needs no retuning.
    """
    if spec is None:
        return None
    counts = [int(c) for c in counts]
    k = len(counts)
    if isinstance(spec, str):  # "auto": the schema allows no other text
        empty = [c for c, n in enumerate(counts) if n == 0]
        if empty:
            raise ConfigError(f"trainer.class_weights=auto: class(es) {empty} have no training image, so no weight "
                              f"can balance them; give the weights as a list of {k}")
        total = sum(counts)
        return [total / (k * n) for n in counts]
    weights = [float(w) for w in spec]
    if len(weights) != k:
        raise ConfigError(f"trainer.class_weights has {len(weights)} values but the data has num_classes={k} "
                          f"(after data.class_subset): give one weight per class, or auto")
    if not any(w > 0 for w in weights):
        raise ConfigError(f"trainer.class_weights={weights} must have at least one positive weight")
    return weights


class Loss:
    """Callable loss(logits, target). Dense 2-D targets (e.g. from mixup) work with every loss."""

    def __init__(self, name: str, label_smoothing: float = 0.0, weight: Sequence[float] | None = None):
        # name is one of cnnlab.config.fields.Loss and 0 <= label_smoothing < 1: the schema checked the config
        self.name = name
        self.smoothing = float(label_smoothing)
        self.weight = None if weight is None else torch.tensor([float(w) for w in weight], dtype=torch.float32)
        self._weights: dict = {}  # the weights on each (device, dtype) the loss has been called with

    def _weight_on(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._weights:
            self._weights[key] = self.weight.to(device=like.device, dtype=like.dtype)
        return self._weights[key]

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # in fp32 whatever the forward pass ran in: under bf16 autocast, softmax (mse), dense mixup targets and
        # the class-weight products would otherwise be rounded to 8 bits of mantissa
        with torch.autocast(logits.device.type, enabled=False):
            return self._compute(logits.float(), target)

    def _compute(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self._weight_on(logits)
        if self.name == "cross_entropy":
            if target.ndim == 2:
                target = target.to(logits.dtype)
                if weight is not None:  # torch divides dense targets by the batch size; weigh as for labels
                    per_sample = F.cross_entropy(logits, target, weight=weight, label_smoothing=self.smoothing,
                                                 reduction="none")
                    return per_sample.sum() / (target @ weight).sum()
            return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.smoothing)
        dense = one_hot_targets(target, logits.shape[1], logits.dtype)
        sample_weight = None if weight is None else dense @ weight  # before smoothing: the target's classes
        if self.smoothing:  # the same smoothed targets cross-entropy uses: (1 - s) one-hot + s / classes
            dense = dense * (1.0 - self.smoothing) + self.smoothing / logits.shape[1]
        if self.name == "bce":
            elementwise = F.binary_cross_entropy_with_logits(logits, dense, reduction="none" if weight is not None
                                                             else "mean")
        else:
            # mse: the quadratic cost of the early literature, between class probabilities and one-hot targets.
            elementwise = F.mse_loss(logits.softmax(dim=1), dense, reduction="none" if weight is not None else "mean")
        if sample_weight is None:
            return elementwise
        return (elementwise.mean(dim=1) * sample_weight).sum() / sample_weight.sum()


def run_loss(trainer: TrainerSection, sampler: str, counts: Sequence[int], announce: bool = True) -> Loss:
    """A run's loss from its validated trainer section (trainer.loss, trainer.label_smoothing,
    trainer.class_weights resolved against the training split's class counts): training's, and cnnlab-eval's for
    the same run. `sampler`: data.sampler. announce: say the class weights in the log (training)."""
    spec = trainer.class_weights
    weights = resolve_class_weights(spec, counts)
    if announce and weights is not None:
        log.info("trainer.class_weights=%s: %s (training images per class: %s)", spec if isinstance(spec, str)
                 else "list", [round(w, 4) for w in weights], counts)
        if spec == "auto" and sampler == "balanced":
            log.warning("data.sampler=balanced already draws every class equally often; with trainer.class_weights"
                        "=auto the rare classes are favoured twice")
    return Loss(trainer.loss, trainer.label_smoothing, weights)
