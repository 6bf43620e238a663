"""What the benchmark scripts share: the hand-written per-sample baseline's dataset, ABBA rounds, quartiles,
throughput of a loader and the machine's load (other jobs on the same cores change CPU numbers a lot).

The scripts import it as `from _bench import ...`: run as `python scripts/<bench>.py`, their own folder is on
the path."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch


class PerSample(torch.utils.data.Dataset):
    """The baseline's dataset: uint8 image tensors through a per-sample v2 pipeline (a TensorDataset with a
    transform), as a user writes it by hand."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def abba(rounds: int, a, b) -> tuple[list, list]:
    """Call a, b, then b, a, alternating each round, so drift in machine speed hits both sides; the results of
    each side, in round order."""
    ra, rb = [], []
    for r in range(rounds):
        for side in ((a, b) if r % 2 == 0 else (b, a)):
            (ra if side is a else rb).append(side())
    return ra, rb


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); one value is all three."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def images_per_s(loader, epochs: int = 1) -> float:
    """Images per second through `epochs` passes of a loader (set_epoch called as a trainer would)."""
    n, start = 0, time.perf_counter()
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for x, _ in loader:
            n += len(x)
    return n / (time.perf_counter() - start)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, or n/a where /proc is not there."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"
