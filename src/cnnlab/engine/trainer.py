"""The training loop: fit on train, validate every epoch, checkpoint, stop early, test with the best weights."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn as nn

from cnnlab import __version__
from cnnlab.devices import Precision
from cnnlab.engine.checkpoint import CKPT_DIR, FORMAT_VERSION, config_hash
from cnnlab.engine.checkpoint_writer import CheckpointWriter
from cnnlab.engine.early_stopping import MonitoredMetric
from cnnlab.engine.progress import Progress
from cnnlab.engine.safety import (StopSignals, disk_message, divergence_message, is_out_of_memory,
                                  out_of_memory_message)
from cnnlab.errors import RunError, TrainingStopped
from cnnlab.metrics import MetricTracker, confusion_matrix, hard_labels, per_class_accuracy
from cnnlab.seeding import derived_generator, rng_state, set_rng_state

log = logging.getLogger("cnnlab")


def split_outputs(out):
    """(main logits, [auxiliary logits]) from a model's output: a tensor, or a tuple such as torchvision's
    GoogLeNetOutputs / InceptionOutputs whose first entry is the main head."""
    if isinstance(out, torch.Tensor):
        return out, []
    return out[0], [a for a in out[1:] if a is not None]


def steps_per_epoch(n_batches: int, limit: int | None) -> int:
    """Batches an epoch actually trains on, given trainer.limit_train_batches."""
    return min(n_batches, limit) if limit else n_batches


class Trainer:
    """Owns the model, optimizer and schedule for one run and the loop that drives them.

    The per-step path is kept to what a hand-written loop does plus on-device metric sums, so the
    engine costs next to nothing over plain PyTorch (see scripts/benchmark.py).
    """

    def __init__(self, *, model: nn.Module, optimizer, schedule, loss, device: torch.device, precision: Precision,
                 cfg, run_dir: Path, seed: int, config: dict, tb=None, progress: Progress | None = None,
                 monitored: MonitoredMetric, data_info=None, freezer=None):
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.loss = loss
        self.device = device
        self.precision = precision
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.config = config
        self.tb = tb
        self.progress = progress or Progress("none", int(cfg.max_epochs))
        self.monitored = monitored
        self.data_info = data_info
        self.freezer = freezer
        self.ks = tuple(sorted({1, *(int(k) for k in cfg.topk)}))
        self.limit_train_batches = cfg.get("limit_train_batches") or None
        self.channels_last = bool(cfg.channels_last)
        self.aux_loss_weight = float(getattr(model, "aux_loss_weight", 0.0))
        self.grad_clip = float(cfg.grad_clip or 0.0)
        self.scaler = torch.amp.GradScaler(device.type) if precision.use_scaler else None
        self.forward_model = torch.compile(model) if cfg.compile else model
        self.epoch = 0            # last completed epoch
        self.global_step = 0
        self.history: list[dict] = []
        self.val_acc_best: float | None = None
        self.stopped_early = False
        self.checkpoints = CheckpointWriter()
        self.nonfinite = str(cfg.get("nonfinite", "stop"))
        self.nonfinite_steps = 0  # steps skipped for a non-finite loss/gradient (trainer.nonfinite=skip)
        self.handle_signals = bool(cfg.get("handle_signals", True))
        self.partial: dict | None = None  # a mid-epoch checkpoint's position, continued by the next fit

    # ---- one step ------------------------------------------------------------------------------------
    def _autocast(self):
        if not self.precision.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.autocast_dtype)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 0, step: int = 0):
        """One optimisation step; returns (loss, logits), or None when a non-finite step was skipped."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits, aux = split_outputs(self.forward_model(x))
            loss = self.loss(logits, y)
            if aux:  # auxiliary classifiers (GoogLeNet, Inception v3) count in training only
                loss = loss + self.aux_loss_weight * sum(self.loss(a, y) for a in aux)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            # Inf/NaN gradients are the scaler's business (it skips the step and lowers the scale).
            if self.nonfinite != "off" and not self._finite(loss, None, epoch, step):
                # close the scaler's cycle (unscale_ may have run): no gradients, so no update; scale lowered
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.step(self.optimizer)
                self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
                self.schedule.step_batch()
                return None
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            norm = None  # checked when clipping computes it anyway; an Inf/NaN gradient otherwise shows up as
            # a non-finite loss on the next step or as a non-finite val/loss before the epoch's checkpoint
            if self.grad_clip:
                norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            if self.nonfinite != "off" and not self._finite(loss, norm, epoch, step):
                self.optimizer.zero_grad(set_to_none=True)
                self.schedule.step_batch()  # the schedule keeps its pace, as with a scaler-skipped step
                return None
            self.optimizer.step()
        self.schedule.step_batch()
        return loss, logits

    def _finite(self, loss: torch.Tensor, grad_norm, epoch: int, step: int) -> bool:
        """Check loss (and gradient norm) once per step: stop with a diagnosis, or skip the step."""
        ok = torch.isfinite(loss.detach())
        if grad_norm is not None:
            ok = ok & torch.isfinite(grad_norm)
        if bool(ok):  # the one sync per step this check costs
            return True
        what = f"the loss is {float(loss.detach()):g}" if not torch.isfinite(loss.detach()) else "a gradient is not finite"
        if self.nonfinite == "skip":  # the caller skips the update
            self.nonfinite_steps += 1
            if self.nonfinite_steps in (1, 10, 100, 1000):
                log.warning("skipped step %d of epoch %d: %s (%d skipped so far)", step + 1, epoch, what,
                            self.nonfinite_steps)
            return False
        raise RunError(divergence_message(what, epoch, step + 1, self.global_step + 1, self._kept()))

    def _kept(self) -> str:
        """What a failed run leaves to resume from, for the error message (read back from disk: the writer is
        asynchronous, so the newest epoch in memory may not be the one on disk)."""
        from cnnlab.engine.checkpoint import load_checkpoint

        last = self.run_dir / CKPT_DIR / "last.ckpt"
        try:
            self.checkpoints.wait()
        except OSError:
            pass  # the failure being reported
        try:
            ckpt = load_checkpoint(last)
        except Exception:  # missing or unreadable: say so rather than fail while reporting a failure
            return "No readable checkpoint had been written yet."
        partial = ckpt.get("partial")
        at = f"epoch {partial['epoch']}, step {partial['loader']['batches']}" if partial else f"epoch {ckpt['epoch']}"
        return f"The last good checkpoint, {last} ({at}), is kept."

    # ---- loops ---------------------------------------------------------------------------------------
    def steps_per_epoch(self, train) -> int:
        return steps_per_epoch(len(train), self.limit_train_batches)

    def fit(self, train, val) -> list[dict]:
        """Train to trainer.max_epochs (or an early stop). Stops cleanly on SIGINT/SIGTERM; failures a user can
        act on (divergence, out of memory, full disk) become a RunError that says what was kept."""
        try:
            with StopSignals(self.handle_signals) as signals:
                self._fit(train, val, signals)
        except (RunError, TrainingStopped):
            raise
        except OSError as bad:
            if bad.errno is None:
                raise
            raise RunError(disk_message(bad.filename or self.run_dir, bad, self._kept())) from bad
        except RuntimeError as bad:
            if not is_out_of_memory(bad):
                raise
            where = f"training epoch {self.epoch + 1}"
            batch_size = getattr(train, "batch_size", None)
            raise RunError(out_of_memory_message(where, batch_size, str(self.cfg.precision), self._kept())) from bad
        finally:
            self.progress.close()
        return self.history

    def _fit(self, train, val, signals: StopSignals) -> None:
        max_epochs = int(self.cfg.max_epochs)
        monitor = self.monitored.monitor
        if self.epoch >= max_epochs:
            log.info("nothing to train: the checkpoint already completed %d of %d epochs", self.epoch, max_epochs)
        if self.epoch == 0 and self.partial is None and self.tb is not None:
            self.tb.filters(self.model, 0)
        for epoch in range(self.epoch + 1, max_epochs + 1):
            partial, self.partial = self.partial, None
            tracker = MetricTracker((1,), self.device)  # top-k beyond 1 is an evaluation metric
            first_step, seconds_before = 0, 0.0
            if partial is None:
                # Global RNG (dropout, per-sample transforms) re-seeded per epoch: a resumed epoch k draws
                # exactly what the uninterrupted run drew.
                torch.manual_seed(derived_generator(self.seed, epoch, 7).initial_seed())
                train.set_epoch(epoch)
            else:  # continue an epoch stopped mid-way: same batches, same random draws from here on
                rng = partial["rng"]
                train.resume(partial["loader"], on_resumed=lambda: set_rng_state(rng))
                first_step, seconds_before = int(partial["loader"]["batches"]), float(partial["seconds"])
                tracker.loss_sum.fill_(float(partial["tracker"]["loss_sum"]))
                tracker.correct.copy_(partial["tracker"]["correct"].to(self.device))
                tracker.count = int(partial["tracker"]["count"])
                log.info("continuing epoch %d after step %d", epoch, first_step)
            if self.freezer is not None:
                self.freezer.before_epoch(epoch)
            self.model.train()
            if self.freezer is not None:
                self.freezer.set_modes()
            self.progress.start_epoch(epoch, self.steps_per_epoch(train), first_step)
            start = time.perf_counter()
            step = first_step
            for step, (x, y) in enumerate(train, start=first_step):
                if self.limit_train_batches and step >= self.limit_train_batches:
                    break
                if self.global_step == 0 and self.tb is not None:
                    self.tb.input_batch(x, self.data_info.mean, self.data_info.std, 0)
                result = self._train_step(x, y, epoch, step)
                if result is not None:
                    tracker.update(result[0], result[1], y)
                    self.progress.update(tracker)
                self.global_step += 1
                if signals.requested:
                    self._stop_mid_epoch(train, tracker, epoch, seconds_before + time.perf_counter() - start,
                                         signals.requested)
            if self.nonfinite == "skip" and tracker.count == 0 and step > first_step:
                raise RunError(divergence_message(f"every step of epoch {epoch} had a non-finite loss or gradient",
                                                  epoch, step + 1, self.global_step, self._kept()))
            metrics = tracker.compute("train")  # reads the sums: the one sync per epoch
            seconds = seconds_before + time.perf_counter() - start
            metrics["lr"] = self.schedule.lr()
            metrics["throughput/img_s"] = tracker.count / max(seconds, 1e-9)
            metrics["time/epoch_s"] = seconds
            if self.nonfinite == "skip":
                metrics["train/nonfinite_steps"] = self.nonfinite_steps
            if getattr(train, "skipped", 0):  # unreadable image files dropped (data.skip_unreadable=true)
                metrics["data/unreadable_skipped"] = train.skipped
                log.warning("%d unreadable image file(s) skipped so far", train.skipped)
            metrics.update(self.evaluate(val, "val"))
            if self.nonfinite != "off" and not math.isfinite(metrics.get("val/loss", 0.0)):
                # weights went bad on a step whose loss was still finite: never checkpoint them
                raise RunError(divergence_message(f"val/loss is {metrics['val/loss']:g} after the epoch", epoch,
                                                  step + 1, self.global_step, self._kept()))
            if monitor not in metrics:
                from cnnlab.errors import ConfigError

                raise ConfigError(f"trainer.monitor={monitor!r} is not a logged metric; "
                                  f"choose one of {', '.join(sorted(k for k in metrics if k.startswith('val/')))}")
            if "val/acc" in metrics:
                self.val_acc_best = max(self.val_acc_best or 0.0, metrics["val/acc"])
                metrics["val/acc_best"] = self.val_acc_best
            improved = self.monitored.update(metrics[monitor], epoch)
            self.schedule.step_epoch(metrics[monitor])
            self.epoch = epoch
            metrics["epoch"] = epoch
            self.history.append(metrics)
            if self.tb is not None:
                self.tb.scalars({k: v for k, v in metrics.items() if k != "epoch"}, epoch)
                if self.tb.wants_histograms(epoch):
                    self.tb.histograms(self.model, epoch)
            self._save_checkpoints(improved)
            self.progress.end_epoch(epoch, metrics, seconds, improved)
            if signals.requested:  # arrived during validation: the epoch's checkpoint is the place to resume
                self.checkpoints.wait()
                raise TrainingStopped(self._stopped_message(signals.requested, f"after epoch {epoch}"),
                                      signals.requested)
            if self.cfg.early_stopping.enabled and self.monitored.should_stop:
                self.stopped_early = True
                log.info("early stopping: %s has not improved for %d epochs (best %.4f at epoch %d)", monitor,
                         self.monitored.patience, self.monitored.best, self.monitored.best_epoch)
                break
        self.checkpoints.wait()  # the caller may read best.ckpt next

    def _stop_mid_epoch(self, train, tracker: MetricTracker, epoch: int, seconds: float, signum: int) -> None:
        """Write last.ckpt at this step (synchronously) and stop; resuming continues this epoch here."""
        state = self.state_dict()
        state["partial"] = {
            "epoch": epoch, "loader": train.state_dict(), "seconds": seconds, "rng": rng_state(),
            "tracker": {"loss_sum": float(tracker.loss_sum), "correct": tracker.correct.cpu(), "count": tracker.count},
        }
        if self.cfg.checkpoint.save_last:
            self.checkpoints.submit(state, [self.run_dir / CKPT_DIR / "last.ckpt"])
        self.checkpoints.wait()
        where = f"at epoch {epoch}, step {state['partial']['loader']['batches']}"
        raise TrainingStopped(self._stopped_message(signum, where), signum)

    def _stopped_message(self, signum: int, where: str) -> str:
        import signal

        name = signal.Signals(signum).name
        if not self.cfg.checkpoint.save_last:
            return f"stopped by {name} {where}; no checkpoint written (trainer.checkpoint.save_last=false)"
        return (f"stopped by {name} {where}; checkpoint written to {self.run_dir / CKPT_DIR / 'last.ckpt'}. "
                f"Continue with: cnnlab-train trainer.resume={self.run_dir}")

    def evaluate(self, loader, prefix: str, with_confusion: bool = False):
        """Loss and top-k accuracy over a split; optionally also the confusion matrix (rows = true class)."""
        was_training = self.model.training
        try:
            return evaluate_model(self.forward_model, loader, self.loss, prefix, ks=self.ks, device=self.device,
                                  autocast=self._autocast, channels_last=self.channels_last,
                                  with_confusion=with_confusion)
        finally:
            self.model.train(was_training)

    def test(self, loader, classes) -> dict:
        """Final pass on the test split with the best (or last) weights; logs and returns test/* metrics."""
        which = str(self.cfg.test_with)
        best = self.run_dir / CKPT_DIR / "best.ckpt"
        if which == "best" and best.is_file():
            state = torch.load(best, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            log.info("testing the best weights (epoch %s, %s=%.4f)", state["epoch"], self.monitored.monitor,
                     self.monitored.best if self.monitored.best is not None else float("nan"))
        metrics, confusion = self.evaluate(loader, "test", with_confusion=True)
        per_class = per_class_accuracy(confusion)
        step = self.epoch
        if self.tb is not None:
            self.tb.scalars(metrics, step)
            self.tb.confusion(confusion, classes, step)
        metrics["test/per_class_acc"] = {c: a for c, a in zip(classes, per_class)}
        metrics["test/confusion_matrix"] = confusion.tolist()
        return metrics

    # ---- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "cnnlab_version": __version__,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "monitored": self.monitored.state_dict(),
            "val_acc_best": self.val_acc_best,
            "history": self.history,
            "rng": rng_state(),
            "nonfinite_steps": self.nonfinite_steps,
            "config": self.config,
            "config_hash": config_hash(self.config),
        }

    def load_state_dict(self, state: dict) -> None:
        """Everything but the model weights (loaded and checked by the caller) to continue a run."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.monitored.load_state_dict(state["monitored"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state.get("history", []))
        self.val_acc_best = state.get("val_acc_best")
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.partial = state.get("partial")
        set_rng_state(state["rng"])

    def _save_checkpoints(self, improved: bool) -> None:
        ckpt_cfg = self.cfg.checkpoint
        folder = self.run_dir / CKPT_DIR
        paths = []
        if improved and ckpt_cfg.save_best:
            paths.append(folder / "best.ckpt")
        if ckpt_cfg.save_last:
            paths.append(folder / "last.ckpt")
        if paths:
            self.checkpoints.submit(self.state_dict(), paths)


@torch.inference_mode()
def evaluate_model(model: nn.Module, loader, loss, prefix: str, *, ks=(1, 5), device, autocast=contextlib.nullcontext,
                   channels_last: bool = False, with_confusion: bool = False):
    """One pass over `loader` in eval mode: {prefix}/loss, {prefix}/acc, {prefix}/acc_top<k> (and confusion)."""
    model.eval()
    tracker = MetricTracker(ks, device)
    confusion = None
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits, _ = split_outputs(model(x))
            batch_loss = loss(logits, y)
        tracker.update(batch_loss, logits.float(), y)
        if with_confusion:
            counts = confusion_matrix(logits.argmax(dim=1), hard_labels(y), logits.shape[1])
            confusion = counts if confusion is None else confusion + counts
    metrics = tracker.compute(prefix)
    return (metrics, confusion) if with_confusion else metrics
