"""The callbacks a training run is built with: TensorBoard, checkpoint files, console progress, early stopping."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cnnlab.engine.callbacks import NOTHING_KEPT, Callback
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.checkpoint_writer import CheckpointWriter
from cnnlab.engine.early_stopping import MonitoredMetric
from cnnlab.engine.progress import Progress
from cnnlab.engine.projector import penultimate_features
from cnnlab.engine.tensorboard import TensorBoardLogger
from cnnlab.engine.top_k import TopK
from cnnlab.engine.metrics import precision_recall_f1

if TYPE_CHECKING:  # for annotations only
    from cnnlab.engine.trainer import Trainer

log = logging.getLogger("cnnlab")


class ModelCheckpoint(Callback):
    """checkpoints/last.ckpt after every epoch (trainer.checkpoint.save_last) and best.ckpt when the monitored
    metric improves (save_best), serialised on a background thread; last.ckpt is also the resume point a stop
    request writes mid-epoch. top_k (trainer.checkpoint.save_top_k): the k best epochs' files beside them, each
    replaced file deleted only once its successor is on disk; the set travels in every checkpoint ("top_k")."""

    def __init__(self, folder: Path, save_last: bool = True, save_best: bool = True, top_k: TopK | None = None):
        self.folder = Path(folder)
        self.save_last = save_last
        self.save_best = save_best
        self.top_k = top_k
        self.writer = CheckpointWriter()

    @property
    def last_path(self) -> Path:
        return self.folder / "last.ckpt"

    @property
    def resume_path(self) -> Path | None:
        """Where a resumable checkpoint is written, or None when none is (save_last=false)."""
        return self.last_path if self.save_last else None

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        paths = []
        if trainer.improved and self.save_best:
            paths.append(self.folder / "best.ckpt")
        if self.save_last:
            paths.append(self.last_path)
        replaced = []
        if self.top_k is not None:
            path, replaced = self.top_k.offer(metrics["epoch"], metrics[self.top_k.monitor])
            paths += [path] if path is not None else []
        if paths:
            self.writer.submit(self._with_top_k(trainer.state_dict()), paths)
        if replaced:
            self.writer.remove(replaced)

    def _with_top_k(self, state: dict) -> dict:
        if self.top_k is not None:
            state["top_k"] = self.top_k.state_dict()
        return state

    def on_fit_end(self, trainer: Trainer) -> None:
        self.writer.wait()  # the caller may read best.ckpt next

    def save_resume_point(self, state: dict) -> Path | None:
        """Write `state` (e.g. a mid-epoch state on a stop request) to last.ckpt and wait until every checkpoint
        is on disk; returns the path, or None when save_last=false (then nothing is written)."""
        if self.save_last:
            self.writer.submit(self._with_top_k(state), [self.last_path])
        self.writer.wait()
        return self.resume_path

    def wait(self) -> None:
        """Block until every submitted checkpoint is on disk."""
        self.writer.wait()

    def kept(self) -> str:
        """What a failed run leaves to resume from, for the error message (read back from disk: the writer is
        asynchronous, so the newest epoch in memory may not be the one on disk)."""
        try:
            self.writer.wait()
        except OSError:
            pass  # the failure being reported
        try:
            ckpt = load_checkpoint(self.last_path)
        except Exception:  # missing or unreadable: say so rather than fail while reporting a failure
            return NOTHING_KEPT
        partial = ckpt.get("partial")
        at = f"epoch {partial['epoch']}, step {partial['loader']['batches']}" if partial else f"epoch {ckpt['epoch']}"
        return f"The last good checkpoint, {self.last_path} ({at}), is kept."

    def teardown(self, trainer: Trainer) -> None:
        self.writer.close()


class CheckpointsOfRankZero:
    """The CheckpointKeeper of a distributed run's other processes: rank 0's ModelCheckpoint writes the files, so
    this one writes nothing; it names the resume point rank 0 writes, for the stop message every process gives."""

    def __init__(self, folder: Path, save_last: bool = True):
        self.resume_path = Path(folder) / "last.ckpt" if save_last else None

    def save_resume_point(self, state: dict) -> Path | None:
        return self.resume_path

    def wait(self) -> None:
        pass

    def kept(self) -> str:
        return NOTHING_KEPT



class EarlyStopping(Callback):
    """Stops training after `patience` epochs without improvement of the monitored metric (the MonitoredMetric
    the trainer updates each epoch; trainer.early_stopping.*)."""

    def __init__(self, monitored: MonitoredMetric):
        self.monitored = monitored

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        m = self.monitored
        if m.should_stop:
            trainer.should_stop = True
            log.info("early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)", m.monitor,
                     m.patience, m.best, m.best_epoch)


class TensorBoardCallback(Callback):
    """The run's TensorBoard event file: the learning-curves layout and the first-layer filters at the start, a
    grid of the first training batch, `train/loss_step` every `log_every_n_steps` steps, per-epoch scalars, and
    every logger.histogram_every_n_epochs epochs the histograms and the filters again (also after the last
    epoch); after the test pass its scalars, the confusion matrix, the per-class precision/recall/F1 table and,
    with logger.projector, the test images' penultimate-layer features for the Projector tab.

    mean, std: the data's normalisation, undone so the input grid and the sprite look like the data.
    """

    def __init__(self, tb: TensorBoardLogger, mean, std, log_every_n_steps: int = 0):
        self.tb = tb
        self.mean, self.std = mean, std
        self.log_every = int(log_every_n_steps)
        self.filters_epoch = 0  # the epoch whose filters the event file holds last

    def on_fit_start(self, trainer: Trainer) -> None:
        self.tb.learning_curves()
        self.filters_epoch = trainer.epoch  # a resumed run logged these weights' filters before it stopped
        if trainer.global_step == 0:
            self.tb.filters(trainer.task.model, 0)

    def on_train_batch_end(self, trainer: Trainer, batch, outputs, step: int) -> None:
        # Counter checks only: the loss is read (a device sync) every log_every steps.
        global_step = trainer.global_step
        if step == 0 and global_step <= 1:  # the run's very first batch, as augmented
            self.tb.input_batch(batch[0], self.mean, self.std, 0)
        # the batch that ends an accumulation window logs its loss, once per optimizer step
        if self.log_every and trainer.stepped and global_step % self.log_every == 0 and outputs is not None:
            self.tb.scalars({"train/loss_step": outputs[0].item()}, global_step)

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        epoch = metrics["epoch"]
        self.tb.scalars({k: v for k, v in metrics.items() if k != "epoch"}, epoch)
        if self.tb.wants_histograms(epoch):
            self.tb.histograms(trainer.task.model, epoch)
            self._filters(trainer, epoch)

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.epoch != self.filters_epoch:  # the learned filters, unless that epoch's are logged already
            self._filters(trainer, trainer.epoch)

    def _filters(self, trainer: Trainer, epoch: int) -> None:
        self.tb.filters(trainer.task.model, epoch)
        self.filters_epoch = epoch

    def on_test_end(self, trainer: Trainer, metrics: dict, confusion: torch.Tensor, classes) -> None:
        self.tb.scalars(metrics, trainer.epoch)
        self.tb.confusion(confusion, classes, trainer.epoch)
        self.tb.per_class_scores(precision_recall_f1(confusion), classes, trainer.epoch)
        samples = self.tb.projector_samples
        if samples and trainer.test_loader is not None:
            rows = penultimate_features(trainer.task.model, trainer.test_loader, samples)
            if rows is not None:
                self.tb.embedding(rows, classes, self.mean, self.std, trainer.epoch)

    def teardown(self, trainer: Trainer) -> None:
        self.tb.close()


class ProgressDisplay(Callback):
    """The console progress (cnnlab.engine.progress.Progress: a bar, plain lines, or nothing) driven by the
    loop: a bar tick per step, and one summary line per epoch."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def on_train_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.progress.start_epoch(epoch, trainer.epoch_steps, trainer.first_step)

    def on_train_batch_end(self, trainer: Trainer, batch, outputs, step: int) -> None:
        if outputs is not None:  # a skipped step does not count
            self.progress.update(trainer.tracker)

    def on_epoch_end(self, trainer: Trainer, metrics: dict) -> None:
        self.progress.end_epoch(metrics["epoch"], metrics, metrics["time/epoch_s"], trainer.improved)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.progress.close()

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self.progress.close()  # the error message must not land inside a live bar

    def teardown(self, trainer: Trainer) -> None:
        self.progress.close()
