"""Evaluating a model on a split: one pass for loss and top-k accuracy, and the report from its confusion matrix."""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnlab.engine.devices import Precision
from cnnlab.engine.metrics import MetricTracker, confusion_matrix, confusion_metrics, hard_labels
from cnnlab.engine.stepping import split_outputs


@torch.inference_mode()
def evaluate_model(model: nn.Module, loader, loss, prefix: str, *, ks=(1, 5), device,
                   precision: Precision | None = None, channels_last: bool = False, with_confusion: bool = False,
                   dist=None, num_classes=None, limit_batches: int | None = None):
    """One pass over `loader` in eval mode: {prefix}/loss, {prefix}/acc, {prefix}/acc_top<k> (and confusion).
    precision: the forward pass runs in its autocast (None: full precision).
    limit_batches: only the first N batches (trainer.limit_val_batches / limit_test_batches smoke runs).

    dist: under DDP the loader yields this process's shard; sums and counts are added over all processes
    (num_classes sizes the confusion matrix of a process whose shard is empty)."""
    model.eval()
    tracker = MetricTracker(ks, device)
    confusion = None
    device_type = torch.device(device).type
    autocast = contextlib.nullcontext if precision is None else lambda: precision.autocast(device_type)
    for x, y in (itertools.islice(loader, limit_batches) if limit_batches else loader):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits, _ = split_outputs(model(x))
            batch_loss = loss(logits, y)
        tracker.update(batch_loss, logits.float(), y)
        if with_confusion:
            counts = confusion_matrix(logits.argmax(dim=1), hard_labels(y), logits.shape[1])
            confusion = counts if confusion is None else confusion + counts
    if dist is not None and dist.enabled:
        tracker.all_reduce(dist)
        if with_confusion:  # a process whose shard is empty still takes part in the sum
            n = num_classes or confusion.shape[0]
            confusion = dist.all_reduce_sum_(confusion if confusion is not None
                                             else torch.zeros(n, n, dtype=torch.long, device=device))
    metrics = tracker.compute(prefix)
    return (metrics, confusion) if with_confusion else metrics


@dataclass
class SplitReport:
    """What a test (Trainer.test) or an evaluation (cnnlab-eval) reports on a split.

    metrics: {split}/loss, /acc, /acc_top<k>, then the averages of the confusion matrix (macro F1, ...).
    per_class: {split}/per_class_acc and /per_class_precision|recall|f1, each {class name: value}.
    confusion: the confusion matrix, rows = true class.
    """

    metrics: dict
    per_class: dict
    confusion: torch.Tensor

    @classmethod
    def of(cls, metrics: dict, confusion: torch.Tensor, classes, split: str) -> SplitReport:
        """From an evaluation pass's metrics and confusion matrix (evaluate_model with with_confusion=True)."""
        averages, per_class = confusion_metrics(confusion, list(classes), split)
        return cls({**metrics, **averages}, per_class, confusion)


def evaluate_split(model: nn.Module, loader, loss, split: str, classes, *, ks, device,
                   precision: Precision | None = None, channels_last: bool = False, dist=None,
                   limit_batches: int | None = None) -> SplitReport:
    """One evaluation pass over a split (evaluate_model) and its report: what cnnlab-eval prints and writes, and
    what the Trainer's test pass records."""
    metrics, confusion = evaluate_model(model, loader, loss, split, ks=ks, device=device, precision=precision,
                                        channels_last=channels_last, with_confusion=True, dist=dist,
                                        num_classes=len(classes), limit_batches=limit_batches)
    return SplitReport.of(metrics, confusion, classes, split)
