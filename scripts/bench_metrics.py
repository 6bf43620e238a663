"""Precision, recall and F1 (per class, macro, weighted) for one test pass: cnnlab's scores from the confusion
matrix against torchmetrics' MulticlassPrecision / MulticlassRecall / MulticlassF1Score, in one process.

The pass is `--images` predictions in batches of `--batch`, the same argmax predictions for both sides:
- cnnlab, marginal: what the test report adds, the scores from the confusion matrix the pass sums anyway
  (cnnlab.engine.metrics.classification_metrics once per pass);
- cnnlab, full: also the confusion matrix itself (cnnlab.engine.metrics.confusion_matrix per batch, summed);
- torchmetrics: a MetricCollection of the nine metrics (3 scores x macro, weighted, per class; compute groups
  share their state) updated per batch, computed once.
Rounds alternate the sides (ABBA); reported: median time per pass and the median of the paired ratios
torchmetrics / cnnlab with quartiles. The values of both sides are compared first.

    pip install torchmetrics
    python scripts/bench_metrics.py                       # 10 and 100 classes, 7 rounds
    python scripts/bench_metrics.py --classes 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cnnlab.engine.metrics import classification_metrics, confusion_matrix  # noqa: E402 (after the path)


def batches(n_images: int, batch: int, classes: int, seed: int = 0):
    """Predictions right about 70% of the time, every class present."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_images) % classes
    labels = labels[torch.randperm(n_images, generator=g)]
    wrong = torch.randint(0, classes, (n_images,), generator=g)
    preds = torch.where(torch.rand(n_images, generator=g) < 0.7, labels, wrong)
    return [(preds[i:i + batch], labels[i:i + batch]) for i in range(0, n_images, batch)]


def ours_full(data, classes):
    confusion = None
    for p, y in data:
        counts = confusion_matrix(p, y, classes)
        confusion = counts if confusion is None else confusion + counts
    return classification_metrics(confusion, [str(c) for c in range(classes)], "test")


def make_ours_marginal(data, classes):
    confusion = sum(confusion_matrix(p, y, classes) for p, y in data)  # the pass computes it already
    return lambda: classification_metrics(confusion, [str(c) for c in range(classes)], "test")


def make_torchmetrics(classes):
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassF1Score, MulticlassPrecision, MulticlassRecall

    metrics = {}
    for average in ("macro", "weighted", "none"):
        metrics[f"precision_{average}"] = MulticlassPrecision(classes, average=average)
        metrics[f"recall_{average}"] = MulticlassRecall(classes, average=average)
        metrics[f"f1_{average}"] = MulticlassF1Score(classes, average=average)
    return MetricCollection(metrics)


def torchmetrics_pass(collection, data):
    collection.reset()
    for p, y in data:
        collection.update(p, y)
    return collection.compute()


def check_equal(data, classes, collection) -> float:
    averages, per_class = ours_full(data, classes)
    theirs = torchmetrics_pass(collection, data)
    worst = 0.0
    for avg in ("macro", "weighted"):
        for score in ("precision", "recall", "f1"):
            worst = max(worst, abs(averages[f"test/{score}_{avg}"] - float(theirs[f"{score}_{avg}"])))
    for score in ("precision", "recall", "f1"):
        ours = torch.tensor(list(per_class[f"test/per_class_{score}"].values()), dtype=torch.float64)
        worst = max(worst, float((ours - theirs[f"{score}_none"].double()).abs().max()))
    return worst


def timed(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchmetrics

    print(f"torch {torch.__version__}, torchmetrics {torchmetrics.__version__}, {args.threads} thread(s), "
          f"{args.images} images in batches of {args.batch}, {args.rounds} rounds")
    print("| classes | cnnlab marginal (ms) | cnnlab full (ms) | torchmetrics (ms) | torchmetrics / marginal | "
          "torchmetrics / full | max abs difference |")
    print("|---|---|---|---|---|---|---|")
    for classes in args.classes:
        data = batches(args.images, args.batch, classes)
        collection = make_torchmetrics(classes)
        diff = check_equal(data, classes, collection)
        marginal = make_ours_marginal(data, classes)
        sides = {"marginal": (marginal, 50), "full": (lambda: ours_full(data, classes), 5),
                 "tm": (lambda: torchmetrics_pass(collection, data), 3)}
        for fn, repeat in sides.values():  # warm-up
            timed(fn, 1)
        times = {name: [] for name in sides}
        order = list(sides)
        for r in range(args.rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                fn, repeat = sides[name]
                times[name].append(timed(fn, repeat))
        ratio_m = [t / m for t, m in zip(times["tm"], times["marginal"])]
        ratio_f = [t / f for t, f in zip(times["tm"], times["full"])]

        def q(values):
            quart = statistics.quantiles(values, n=4)
            return f"{statistics.median(values):.1f}x ({quart[0]:.1f}-{quart[2]:.1f})"

        med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        print(f"| {classes} | {med['marginal']:.3f} | {med['full']:.2f} | {med['tm']:.2f} | {q(ratio_m)} | "
              f"{q(ratio_f)} | {diff:.1e} |")


if __name__ == "__main__":
    main()
