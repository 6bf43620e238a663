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


AVERAGES = ("macro", "weighted")
SCORES = ("precision", "recall", "f1")


def precision_recall_f1(confusion: torch.Tensor) -> dict:
    """Per-class precision, recall and F1 and their macro and weighted means, from a confusion matrix (rows
    true, columns predicted). Computed from the matrix alone, so the values are exact under DDP (the matrix
    is summed over processes) and cost nothing per batch.

    A class with samples but no predictions has precision 0, one predicted but without samples has recall 0,
    and F1 = 2 tp / (samples + predictions) is 0 for both (scikit-learn's zero_division=0). A class with
    neither has no values (None) and is left out of the macro mean, as scikit-learn leaves out labels absent
    from both y_true and y_pred. Weighted means weigh each class by its samples (support).

    Returns {"precision"|"recall"|"f1": [per class], "support": [per class],
             "macro"|"weighted": {"precision", "recall", "f1"}} (the means empty for an empty matrix).
    """
    c = confusion.detach().double().cpu()
    tp = c.diagonal()
    support = c.sum(dim=1)
    predicted = c.sum(dim=0)
    present = (support + predicted) > 0
    safe = lambda num, den: torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))  # noqa: E731
    scores = {"precision": safe(tp, predicted), "recall": safe(tp, support), "f1": safe(2 * tp, support + predicted)}
    out = {name: [float(v) if p else None for v, p in zip(values.tolist(), present.tolist())]
           for name, values in scores.items()}
    out["support"] = [int(s) for s in support.tolist()]
    total = float(support.sum())
    out["macro"] = {n: float(v[present].mean()) for n, v in scores.items()} if bool(present.any()) else {}
    out["weighted"] = {n: float((v * support).sum() / total) for n, v in scores.items()} if total > 0 else {}
    return out


def classification_metrics(confusion: torch.Tensor, classes, prefix: str) -> tuple[dict, dict]:
    """(averages, per class) as metric keys: `{prefix}/precision_macro` ... `{prefix}/f1_weighted` (floats,
    for TensorBoard scalars and HParams), and `{prefix}/per_class_precision|recall|f1`: {class name: value}."""
    report = precision_recall_f1(confusion)
    averages = {f"{prefix}/{score}_{avg}": report[avg][score] for avg in AVERAGES for score in SCORES
                if score in report[avg]}
    per_class = {f"{prefix}/per_class_{score}": dict(zip(classes, report[score])) for score in SCORES}
    return averages, per_class


def confusion_metrics(confusion: torch.Tensor, classes, prefix: str) -> tuple[dict, dict]:
    """What a test (Trainer.test) or an evaluation (cnnlab-eval) reports from its split's confusion matrix:
    (averages: classification_metrics' floats, per class: `{prefix}/per_class_acc`, then classification_metrics'
    `{prefix}/per_class_precision|recall|f1`), each {class name: value}."""
    averages, scores = classification_metrics(confusion, classes, prefix)
    return averages, {f"{prefix}/per_class_acc": dict(zip(classes, per_class_accuracy(confusion))), **scores}


def accuracy_key(prefix: str, k: int) -> str:
    """The name of a split's top-k accuracy: {prefix}/acc for k = 1, {prefix}/acc_top<k> beyond."""
    return f"{prefix}/acc" if k == 1 else f"{prefix}/acc_top{k}"


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
            out[accuracy_key(prefix, k)] = c / self.count
        return out
