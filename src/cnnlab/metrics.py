"""Accuracy (top-k), per-class accuracy and confusion matrices, accumulated on the device without syncs."""

from __future__ import annotations

import torch


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Integer labels, also for dense targets (the largest entry wins)."""
    return target.argmax(dim=1) if target.ndim == 2 else target


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """Number of samples whose label is within the top k predictions, for each k (a tensor, no sync)."""
    labels = hard_labels(target)
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(labels[:, None])
    return torch.stack([hits[:, :min(k, kmax)].any(dim=1).sum() for k in ks])


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted ones."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    totals = confusion.sum(dim=1)
    return [float(confusion[i, i] / totals[i]) if totals[i] > 0 else None for i in range(len(totals))]


class MetricTracker:
    """Running sums for one pass over a split: loss, top-k hits, sample count.

    Sums stay on the device (no sync per step); top-1 alone, as in training, takes the cheaper argmax path.
    """

    def __init__(self, ks: tuple[int, ...], device):
        self.ks = ks
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros(len(ks), device=device, dtype=torch.long)
        self.count = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = logits.shape[0]
        self.loss_sum.add_(loss.detach(), alpha=n)
        if self.ks == (1,):  # count_nonzero: the same count as .sum() of the hits, in half the time on CPU
            self.correct.add_(torch.count_nonzero(logits.detach().argmax(dim=1).eq(hard_labels(target))))
        else:
            self.correct.add_(topk_correct(logits.detach(), target, self.ks))
        self.count += n

    def running(self) -> tuple[float, float]:
        """Mean loss and top-1 accuracy so far (reads the sums: one device sync)."""
        n = max(self.count, 1)
        return float(self.loss_sum) / n, int(self.correct[0]) / n

    def state_dict(self) -> dict:
        """The sums so far, in types torch.load(weights_only=True) reads (a mid-epoch checkpoint carries them)."""
        return {"loss_sum": float(self.loss_sum), "correct": self.correct.cpu(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        """Continue from the sums of `state_dict()`, e.g. for an epoch resumed mid-way."""
        self.loss_sum.fill_(float(state["loss_sum"]))
        self.correct.copy_(state["correct"].to(self.correct.device))
        self.count = int(state["count"])

    def all_reduce(self, dist) -> None:
        """Add up the sums of every process (distributed training; a no-op in one process), in place."""
        if not dist.enabled:
            return
        count = torch.tensor([self.count], dtype=torch.long, device=self.correct.device)
        dist.all_reduce_sum_(self.loss_sum)
        dist.all_reduce_sum_(self.correct)
        self.count = int(dist.all_reduce_sum_(count))

    def compute(self, prefix: str) -> dict[str, float]:
        if self.count == 0:
            return {}
        correct = self.correct.tolist()
        out = {f"{prefix}/loss": float(self.loss_sum) / self.count}
        for k, c in zip(self.ks, correct):
            out[f"{prefix}/acc" if k == 1 else f"{prefix}/acc_top{k}"] = c / self.count
        return out
