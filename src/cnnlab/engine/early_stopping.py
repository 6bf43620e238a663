"""Tracking the monitored metric: best value, improvement, and when patience has run out."""

from __future__ import annotations

import math



def resolve_monitor_mode(monitor: str, mode: str) -> str:
    """min for losses, max for accuracies, unless the config says otherwise."""
    if mode in ("min", "max"):
        return mode
    return "max" if "acc" in monitor.rsplit("/", 1)[-1] else "min"


class MonitoredMetric:
    """Best-so-far bookkeeping with patience and min_delta, shared by early stopping and best.ckpt.

    An epoch improves when its value beats the best by more than min_delta; after `patience` epochs in a
    row without improvement, should_stop turns true. NaN never counts as an improvement.
    """

    def __init__(self, monitor: str, mode: str, patience: int | None, min_delta: float = 0.0):
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record this epoch's value; True when it is a new best."""
        improved = math.isfinite(value) and (self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta))
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], int(state["bad_epochs"])
