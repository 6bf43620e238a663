"""Callbacks: what happens around the training loop, called by the Trainer at named moments.

A callback subclasses `Callback` and overrides the moments it needs; the others are no-ops. The Trainer holds
them in a list and calls each moment on every callback in list order, so order matters where one callback's
output is another's input (the checkpoint is submitted before the progress line is printed).

    on_fit_start(trainer)                            before the first epoch of this fit (also when resuming)
    on_train_epoch_start(trainer, epoch)             model in train mode, loader positioned
    on_train_batch_end(trainer, batch, outputs, step)  after every optimisation step (see below)
    on_epoch_end(trainer, metrics)                   after validation; the epoch's metrics are final and recorded
    on_fit_end(trainer)                              after the last epoch (or an early stop)
    on_exception(trainer, error)                     fit is ending with an exception (failure, or a stop signal)
    on_test_end(trainer, metrics, confusion, classes)  after the final test pass
    teardown(trainer)                                release files and threads; once per run, also after a failure

What the trainer offers them: `trainer.task` (model, optimizer, schedule, loss, monitored metric),
`trainer.epoch` (last completed epoch), `trainer.global_step` (steps taken), `trainer.tracker` (the running
sums of the epoch being trained), `trainer.improved` (the epoch just ended set a new best of the monitored
metric), `trainer.history`, `trainer.test_loader` (the loader of the test pass, from `on_test_end` on: a
callback may run the model over it again); a callback ends training after the current epoch by setting
`trainer.should_stop = True`. Raising from a moment ends the run with that error.

Per-step cost: `on_train_batch_end` runs once per optimisation step, where a few microseconds are a visible
share of a small model's step. The trainer therefore calls it only on callbacks that override it; a callback
with per-step work keeps it to counters and comparisons and does anything costly every N steps.

The callbacks of a training run (cnnlab.engine.run_callbacks, built by cnnlab.run.lifecycle.prepare, in this
order): TensorBoardCallback, ModelCheckpoint, MetricsCSV (cnnlab.engine.metrics_csv), ProgressDisplay,
MlflowCallback (cnnlab.engine.mlflow_tracking) when logger.mlflow.enabled, and EarlyStopping when
trainer.early_stopping.enabled. A new one is a subclass there (or next to what it reports
to), added to that list; under distributed training, callbacks that write files would be added on rank 0 only.

The Trainer knows no concrete callback. The one that keeps the checkpoint files is also handed to it as a
`CheckpointKeeper` (Trainer(..., checkpoints=...)): what a stop request and an error message need of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

# The cnnlab.engine.trainer.Trainer that calls every moment with itself, for annotations: named, not imported,
# since the trainer imports this module and this module imports nothing of the trainer.
Trainer = Any

NOTHING_KEPT = "No readable checkpoint had been written yet."


class Callback:
    """Base class: every moment is a no-op. Override the ones you need (signatures as below)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of `fit`; `trainer.global_step == 0` on a fresh run."""

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """The epoch is about to train `trainer.epoch_steps` batches, `trainer.first_step` of which were
        already done before an interruption (then the epoch continues after them)."""

    def on_train_batch_end(self, trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor], outputs,
                           step: int) -> None:
        """After training batch `step` (0-based within the epoch). With trainer.accumulate_grad_batches=k an
        optimizer step follows every k-th batch: then `trainer.stepped` is true and `trainer.global_step`
        already counts that step.

        outputs: (loss, logits) of the batch, or None when a non-finite one was skipped (trainer.nonfinite=skip).
        Called only on callbacks that override it (see the module docstring).
        """

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        """After training and validating epoch `trainer.epoch`: `metrics` is its entry in `trainer.history`
        (train/*, val/*, lr, ..., epoch); the schedule and the monitored metric have been updated."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch of a fit that ended normally (max_epochs or `should_stop`)."""

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """`fit` is ending with `error` (a failure, TrainingStopped on a signal, KeyboardInterrupt)."""

    def on_test_end(self, trainer: Trainer, metrics: dict, confusion: torch.Tensor, classes) -> None:
        """After the final test pass: test/* metrics and the confusion matrix (rows = true class)."""

    def teardown(self, trainer: Trainer) -> None:
        """Release what the callback holds (files, threads). Called once the run is over, also after a failure;
        it may be called twice, so it must be idempotent."""


def overrides(callback: Callback, moment: str) -> bool:
    """Whether the callback's class defines its own `moment` (rather than Callback's no-op)."""
    return getattr(type(callback), moment) is not getattr(Callback, moment)


class CheckpointKeeper(Protocol):
    """What the Trainer asks of whoever keeps the run's checkpoint files (cnnlab.engine.run_callbacks:
    ModelCheckpoint on the process that writes them, CheckpointsOfRankZero on the others of a distributed run)."""

    @property
    def resume_path(self) -> Path | None:
        """Where the resume point is written, or None when none is (trainer.checkpoint.save_last=false)."""

    def save_resume_point(self, state: dict) -> Path | None:
        """Write `state` (a mid-epoch state on a stop request) as the resume point and wait until every
        checkpoint is on disk; returns `resume_path`."""

    def wait(self) -> None:
        """Block until every checkpoint submitted so far is on disk."""

    def kept(self) -> str:
        """What a failed run leaves to resume from, for an error message (NOTHING_KEPT when nothing)."""
