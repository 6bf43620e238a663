"""Short training runs that tests look inside: `fit` a prepared run (its model, trainer and history stay at
hand, unlike `train`'s metrics), `KillAfter`, a Ctrl-C at the end of a chosen epoch, and `same_tensors`."""

from __future__ import annotations

import torch

from cnnlab.engine.callbacks import Callback
from cnnlab.run.lifecycle import prepare


def fit(cfg, overrides=(), callbacks=()):
    """prepare(cfg) and fit it on its train and val sets: (the prepared run, the history of epoch metrics).
    The callbacks are released also when fitting fails, without hiding the failure."""
    run = prepare(cfg, overrides=list(overrides), extra_callbacks=tuple(callbacks))
    ok = False
    try:
        history = run.trainer.fit(run.data.train, run.data.val)
        ok = True
    finally:
        run.trainer.teardown(after_error=not ok)
    return run, history


def same_tensors(a: dict, b: dict) -> bool:
    """Two state dicts hold the same names and exactly equal tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class KillAfter(Callback):
    """Interrupts training at the end of `epoch`, as a Ctrl-C between epochs would."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer, metrics):
        if metrics["epoch"] == self.epoch:
            raise KeyboardInterrupt(f"simulated kill after epoch {self.epoch}")
