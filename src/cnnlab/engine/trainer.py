"""The training loop: fit on train, validate every epoch, checkpoint, stop early, test with the best weights."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from cnnlab import __version__
from cnnlab.engine.callbacks import NOTHING_KEPT, Callback, ModelCheckpoint, overrides
from cnnlab.engine.checkpoint import CKPT_DIR, FORMAT_VERSION, RAW_WEIGHTS, config_hash, unreadable_reason
from cnnlab.engine.safety import (StopSignals, disk_message, divergence_message, is_out_of_memory,
                                  out_of_memory_message)
from cnnlab.engine.task import RunContext, Task, TrainerOptions, TrainLoader
from cnnlab.errors import ConfigError, RunError, TrainingStopped
from cnnlab.engine.metrics import MetricTracker, confusion_matrix, confusion_metrics, hard_labels
from cnnlab.engine.seeding import derived_generator, rng_state, set_rng_state

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


def optimizer_steps_per_epoch(n_batches: int, limit: int | None, accumulate: int = 1) -> int:
    """Optimizer steps in an epoch (what per-step schedules count): one per window of `accumulate` batches,
    the last window possibly shorter."""
    return -(-steps_per_epoch(n_batches, limit) // accumulate)


class Trainer:
    """Runs one training task: fit on train, validate every epoch, checkpoint, stop early, test with the best
    weights.

    Given (see cnnlab.engine.task):
      task       what is trained: model, optimizer, LR schedule, loss, monitored metric, freezer
      options    how the loop runs (TrainerOptions, from cfg.trainer)
      context    where: device, precision, run dir, seed, the resolved config checkpoints carry
      callbacks  what happens around the loop, called in list order at the moments cnnlab.engine.callbacks
                 lists (TensorBoard, checkpoint files, progress, early stopping)

    An epoch is `_train_epoch` (its steps) followed by validation and `_end_epoch` (record, callbacks, stop
    decisions). The per-step path is what a hand-written loop does plus on-device metric sums, one read of the
    loss for the divergence check, and only the callbacks that have per-step work, so the engine costs next
    to nothing over plain PyTorch (see scripts/benchmark.py).
    """

    def __init__(self, task: Task, options: TrainerOptions, context: RunContext, callbacks: Sequence[Callback] = ()):
        self.task = task
        self.options = options
        self.context = context
        self.callbacks = list(callbacks)
        self._batch_hooks: list = []  # set by fit from self.callbacks
        self.device = context.device
        self.scaler = torch.amp.GradScaler(self.device.type) if context.precision.use_scaler else None
        self.dist = context.dist
        self._wrap()
        self.aux_loss_weight = float(getattr(task.model, "aux_loss_weight", 0.0))
        self._no_sync_off = contextlib.nullcontext()  # reusable: one object for every step that syncs
        self.epoch = 0            # last completed epoch
        self.global_step = 0
        self.history: list[dict] = []
        self.val_acc_best: float | None = None
        self.nonfinite_steps = 0  # steps skipped for a non-finite loss/gradient (trainer.nonfinite=skip)
        self._window_bad: str | None = None  # the accumulation window's step will be skipped: why
        self.stepped = False      # the last train_step ended an accumulation window (an optimizer step)
        self.partial: dict | None = None  # a mid-epoch checkpoint's position, continued by the next fit
        # What callbacks read and set (cnnlab.engine.callbacks):
        self.tracker: MetricTracker | None = None  # running sums of the epoch being trained
        self.epoch_steps = 0      # batches the epoch being trained runs
        self.first_step = 0       # of those, done before an interruption (the epoch continues after them)
        self._cut_logged: set[str] = set()  # evaluation splits whose trainer.limit_*_batches cut was logged
        self.improved = False     # the epoch just ended set a new best of the monitored metric
        self.should_stop = False  # set by a callback: stop after this epoch
        self.stopped_early = False
        self.test_loader: Iterable | None = None  # set by test, for callbacks that look at the test data again

    def _wrap(self) -> None:
        """The model the steps run: under distributed training the DistributedDataParallel wrapper (built
        again when fine-tuning unfreezes layers, since DDP tracks the parameters that train at construction),
        compiled with trainer.compile. Evaluation under DDP runs the plain model: no collectives mid-pass."""
        model = self.task.model
        self.ddp = None
        forward = model
        if self.dist.enabled:
            from cnnlab.engine.distributed import wrap

            self.ddp = forward = wrap(model, self.dist, self.device)
        self.forward_model = torch.compile(forward) if self.options.compile else forward
        self.eval_model = self.forward_model if self.ddp is None else model
        self._wrapped_trainable = self._trainable()

    def _trainable(self) -> tuple[bool, ...]:
        return tuple(p.requires_grad for p in self.task.model.parameters())

    @property
    def checkpoint_callback(self) -> ModelCheckpoint | None:
        """The callback that writes checkpoint files (resume points on a stop request), if any."""
        return next((cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)), None)

    def _call(self, moment: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, moment)(self, *args)

    # ---- one step ------------------------------------------------------------------------------------
    def _autocast(self):
        return self.context.precision.autocast(self.device.type)

    def _no_sync(self, stepping: bool):
        """DDP: the micro-batches that do not step run forward and backward inside the wrapper's no_sync(), so
        gradients are all-reduced once per optimizer step, not once per batch."""
        if self.ddp is None or stepping:
            return self._no_sync_off
        return self.ddp.no_sync()

    def _window(self, step: int) -> tuple[int, int]:
        """(first batch, batches) of the accumulation window holding batch `step` of this epoch.

        Windows of trainer.accumulate_grad_batches=k batches count from where this fit entered the epoch (a
        mid-epoch checkpoint is only taken at a window's end); an epoch's last r < k batches form a window of r.
        """
        k = self.options.accumulate_grad_batches
        start = self.first_step + (step - self.first_step) // k * k
        end = start + k if not self.epoch_steps else min(start + k, self.epoch_steps)
        return start, max(1, end - start)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int = 0, step: int = 0):
        """Forward and backward for batch `step`; an optimizer step at the end of its accumulation window
        (every batch when trainer.accumulate_grad_batches=1). Returns (loss, logits), or None when a non-finite
        batch or step was skipped. Sets `self.stepped`: this batch ended a window."""
        task, options, scaler = self.task, self.options, self.scaler
        optimizer = task.optimizer
        if options.accumulate_grad_batches == 1:
            first, size, last = True, 1, True
        else:
            start, size = self._window(step)
            first, last = step == start, step == start + size - 1
        if first:
            optimizer.zero_grad(set_to_none=True)
            self._window_bad = None  # why the window's step is skipped (trainer.nonfinite=skip), if it is
        self.stepped = last
        if options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._no_sync(last):
            with self._autocast():
                logits, aux = split_outputs(self.forward_model(x))
                loss = task.loss(logits, y)
                if aux:  # auxiliary classifiers (GoogLeNet, Inception v3) count in training only
                    loss = loss + self.aux_loss_weight * sum(task.loss(a, y) for a in aux)
            # the mean over the window's batches: k batches of b train like one batch of k*b
            scaled = loss / size if size > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        check = options.nonfinite != "off"
        outputs = (loss, logits)
        if check and not self._finite(loss, epoch, step):
            outputs = None
        if not last:
            return outputs
        if self.dist.enabled:
            self._agree_on_step(epoch, step, check)
        return outputs if self._optimizer_step(epoch, step, check) else None

    def _agree_on_step(self, epoch: int, step: int, check: bool) -> None:
        """DDP, once per optimizer step: one small all-reduce tells every process whether any of them saw a
        non-finite loss in the window (all skip the step, or all stop) and whether any was asked to stop (all
        stop after this same step). Gradients are identical on every process, so the rest of the step agrees."""
        bad, self.stop_agreed = self.dist.any(self._window_bad is not None, self.signals_requested())
        if bad and self._window_bad is None:
            self._window_bad = "a loss on another process is not finite"
        if bad and check and self.options.nonfinite != "skip":
            raise RunError(divergence_message(self._window_bad, epoch, step + 1, self.global_step + 1, self.kept()))

    def _optimizer_step(self, epoch: int, step: int, check: bool) -> bool:
        """Clip, check and apply the window's summed gradients; False when the step was skipped."""
        task, options, scaler = self.task, self.options, self.scaler
        optimizer = task.optimizer
        if scaler is not None:
            if options.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(task.model.parameters(), options.grad_clip)
            # Inf/NaN gradients are the scaler's business (it skips the step and lowers the scale).
            if self._window_bad is not None:
                self._skipped(epoch, step)
                # close the scaler's cycle (unscale_ may have run): no gradients, so no update; scale lowered
                optimizer.zero_grad(set_to_none=True)
                scaler.step(optimizer)
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
                task.schedule.step_batch()
                return False
            scaler.step(optimizer)
            scaler.update()
        else:
            # The norm is checked when clipping computes it anyway; an Inf/NaN gradient otherwise shows up as
            # a non-finite loss on the next step or as a non-finite val/loss before the epoch's checkpoint.
            if options.grad_clip:
                norm = nn.utils.clip_grad_norm_(task.model.parameters(), options.grad_clip)
                if check and self._window_bad is None and not math.isfinite(norm.item()):
                    self._nonfinite("a gradient is not finite", epoch, step)
            if self._window_bad is not None:
                self._skipped(epoch, step)
                optimizer.zero_grad(set_to_none=True)
                task.schedule.step_batch()  # the schedule keeps its pace, as with a scaler-skipped step
                return False
            optimizer.step()
        task.schedule.step_batch()
        return True

    def _finite(self, loss: torch.Tensor, epoch: int, step: int) -> bool:
        """Check a batch's loss once: stop with a diagnosis, or mark its window's step to be skipped."""
        # .item() is the one device sync this check costs; on CPU it is also ~15x cheaper than
        # bool(torch.isfinite(loss)), which runs an extra op.
        value = loss.item()
        if math.isfinite(value):
            return True
        self._nonfinite(f"the loss is {value:g}", epoch, step)
        return False

    def _nonfinite(self, what: str, epoch: int, step: int) -> None:
        # under DDP the other processes must stop at the same step: _agree_on_step raises on all of them
        if self.options.nonfinite != "skip" and not self.dist.enabled:
            raise RunError(divergence_message(what, epoch, step + 1, self.global_step + 1, self.kept()))
        if self._window_bad is None:
            self._window_bad = what

    def _skipped(self, epoch: int, step: int) -> None:
        """Count a skipped optimizer step (trainer.nonfinite=skip)."""
        self.nonfinite_steps += 1
        if self.nonfinite_steps in (1, 10, 100, 1000):
            log.warning("skipped step %d of epoch %d: %s (%d skipped so far)", step + 1, epoch, self._window_bad,
                        self.nonfinite_steps)

    def kept(self) -> str:
        """What a failed run leaves to resume from, for an error message."""
        ckpt = self.checkpoint_callback
        return ckpt.kept() if ckpt is not None else NOTHING_KEPT

    # ---- loops ---------------------------------------------------------------------------------------
    def steps_per_epoch(self, train: TrainLoader) -> int:
        return steps_per_epoch(len(train), self.options.limit_train_batches)

    def fit(self, train: TrainLoader, val: Iterable) -> list[dict]:
        """Train to trainer.max_epochs (or an early stop). Stops cleanly on SIGINT/SIGTERM; failures a user can
        act on (divergence, out of memory, full disk) become a RunError that says what was kept."""
        try:
            with StopSignals(self.options.handle_signals) as signals:
                self._signals = signals
                self._fit(train, val, signals)
        except BaseException as error:
            self._call("on_exception", error)
            self._raise_as_run_error(error, train)
            raise
        return self.history

    def _raise_as_run_error(self, error: BaseException, train: TrainLoader) -> None:
        """Out of memory and a full disk become a RunError with what to do; other errors pass unchanged."""
        if isinstance(error, (RunError, TrainingStopped)):
            return
        if isinstance(error, OSError) and error.errno is not None:
            raise RunError(disk_message(error.filename or self.context.run_dir, error, self.kept())) from error
        if isinstance(error, RuntimeError) and is_out_of_memory(error):
            where = f"training epoch {self.epoch + 1}"
            message = out_of_memory_message(where, train.batch_size, self.options.precision, self.kept())
            raise RunError(message) from error

    def _fit(self, train: TrainLoader, val: Iterable, signals: StopSignals) -> None:
        max_epochs = self.options.max_epochs
        if self.epoch >= max_epochs:
            log.info("nothing to train: the checkpoint already completed %d of %d epochs", self.epoch, max_epochs)
        self.should_stop = False
        # Per step, only the callbacks that override on_train_batch_end are called: a call per step to an
        # empty method is a measurable share of a small model's step.
        self._batch_hooks = [cb.on_train_batch_end for cb in self.callbacks if overrides(cb, "on_train_batch_end")]
        self._call("on_fit_start")
        for epoch in range(self.epoch + 1, max_epochs + 1):
            metrics = self._train_epoch(train, epoch, signals)
            self._average_epoch(train, epoch)
            averaged = self.validated_module()  # trainer.ema / trainer.swa: the average is what is validated
            metrics.update(self.evaluate(val, "val") if averaged is None
                           else self.evaluate(val, "val", module=averaged))
            self._end_epoch(epoch, metrics, signals)
            if self.should_stop:
                self.stopped_early = True
                break
        self._call("on_fit_end")

    def validated_module(self) -> nn.Module | None:
        """What validation measures: the averaged weights once trainer.ema / trainer.swa hold an average, else
        None (the model itself)."""
        average = self.task.average
        return average.module if average is not None and average.active else None

    def _average_epoch(self, train: TrainLoader, epoch: int) -> None:
        """trainer.swa: the epoch-end weights into the average, and its batch-norm statistics over the epoch's
        training inputs (the same batches again: a loader's epoch depends only on (seed, epoch))."""
        average = self.task.average
        if average is None:
            return

        def inputs():
            train.set_epoch(epoch)
            for x, _ in train:
                yield x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

        with self._autocast():
            average.after_epoch(self.task.model, epoch, inputs, self.dist)

    def signals_requested(self) -> bool:
        """A stop signal reached this process."""
        signals = getattr(self, "_signals", None)
        return signals is not None and signals.requested is not None

    def _stop_requested(self, signals: StopSignals) -> bool:
        """Whether to stop after this optimizer step: under DDP only when every process agrees (the vote taken in
        _agree_on_step), so all stop after the same step; a single process stops on its own signal."""
        if self.dist.enabled:
            return self.stop_agreed
        return signals.requested is not None

    def _start_epoch(self, train: TrainLoader, epoch: int) -> float:
        """Position the loader and the random streams for `epoch` (continuing an interrupted one), set up the
        running sums and train mode; returns the seconds the epoch had already run before an interruption."""
        partial, self.partial = self.partial, None
        self.tracker = MetricTracker((1,), self.device)  # top-k beyond 1 is an evaluation metric
        self.first_step, seconds_before = 0, 0.0
        if partial is None:
            self._reseed(epoch)
            train.set_epoch(epoch)
        else:  # continue an epoch stopped mid-way: same batches, same random draws from here on
            loader_state, rng = self._own_partial(partial)
            train.resume(loader_state, on_resumed=lambda: set_rng_state(rng))
            self.first_step, seconds_before = int(loader_state["batches"]), float(partial["seconds"])
            if self.dist.is_main:  # the sums of all processes (see _stop_mid_epoch); the others start from 0
                self.tracker.load_state_dict(partial["tracker"])
            log.info("continuing epoch %d after step %d", epoch, self.first_step)
        if self.task.average is not None:
            self.task.average.before_epoch(epoch)
        freezer = self.task.freezer
        if freezer is not None:
            freezer.before_epoch(epoch)
            if self.ddp is not None and self._trainable() != self._wrapped_trainable:
                self._wrap()
        self.task.model.train()
        if freezer is not None:
            freezer.set_modes()
        self.epoch_steps = self.steps_per_epoch(train)
        self._call("on_train_epoch_start", epoch)
        return seconds_before

    def _reseed(self, epoch: int) -> None:
        """Global RNG (dropout, per-sample transforms) re-seeded per epoch: a resumed epoch k draws exactly what
        the uninterrupted run drew."""
        seed = derived_generator(self.context.seed, epoch, 7 + 1_000 * self.dist.rank).initial_seed()
        if self.device.type == "cpu":
            # the one generator a CPU run draws from; torch.manual_seed would also queue a seed (with a captured
            # stack, ~0.2 ms) for every accelerator the build supports
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)

    def _train_epoch(self, train: TrainLoader, epoch: int, signals: StopSignals) -> dict:
        """Train one epoch (or the rest of an interrupted one); returns its train/* metrics, lr and timing."""
        seconds_before = self._start_epoch(train, epoch)
        start = time.perf_counter()
        limit, tracker, hooks = self.options.limit_train_batches, self.tracker, self._batch_hooks
        average, model = self.task.average, self.task.model  # trainer.ema: updated after every optimizer step
        step = first_step = self.first_step
        for step, batch in enumerate(train, start=first_step):
            if limit and step >= limit:
                break
            x, y = batch
            outputs = self.train_step(x, y, epoch, step)
            if outputs is not None:
                tracker.update(outputs[0], outputs[1], y)
            if self.stepped:
                self.global_step += 1  # optimizer steps, taken or skipped
                if average is not None:
                    average.after_step(model, self.global_step)
            for hook in hooks:
                hook(self, batch, outputs, step)
            # mid-epoch checkpoints hold no partly summed gradients: a stop waits for the window's step
            if self.stepped and self._stop_requested(signals):
                self._stop_mid_epoch(train, epoch, seconds_before + time.perf_counter() - start, signals.requested)
        if self.options.nonfinite == "skip" and tracker.count == 0 and step > first_step:
            raise RunError(divergence_message(f"every step of epoch {epoch} had a non-finite loss or gradient",
                                              epoch, step + 1, self.global_step, self.kept()))
        tracker.all_reduce(self.dist)  # DDP: every process's sums (train metrics cover the global batch)
        metrics = tracker.compute("train")  # reads the sums: the one sync per epoch
        seconds = seconds_before + time.perf_counter() - start
        metrics["lr"] = self.task.schedule.lr()
        metrics["throughput/img_s"] = tracker.count / max(seconds, 1e-9)
        metrics["time/epoch_s"] = seconds
        if self.options.nonfinite == "skip":
            metrics["train/nonfinite_steps"] = self.nonfinite_steps
        if train.skipped:  # unreadable image files dropped (data.skip_unreadable=true)
            metrics["data/unreadable_skipped"] = train.skipped
            log.warning("%d unreadable image file(s) skipped so far", train.skipped)
        return metrics

    def _end_epoch(self, epoch: int, metrics: dict, signals: StopSignals) -> None:
        """Check and record the validated epoch, update the schedule, run the callbacks' on_epoch_end, and stop
        on a signal that arrived during validation."""
        monitor = self.task.monitored.monitor
        if self.options.nonfinite != "off" and not math.isfinite(metrics.get("val/loss", 0.0)):
            # weights went bad on a step whose loss was still finite: never checkpoint them
            raise RunError(divergence_message(f"val/loss is {metrics['val/loss']:g} after the epoch", epoch,
                                              self.epoch_steps, self.global_step, self.kept()))
        if monitor not in metrics:
            raise ConfigError(f"trainer.monitor={monitor!r} is not a logged metric; "
                              f"choose one of {', '.join(sorted(k for k in metrics if k.startswith('val/')))}")
        if "val/acc" in metrics:
            self.val_acc_best = max(self.val_acc_best or 0.0, metrics["val/acc"])
            metrics["val/acc_best"] = self.val_acc_best
        self.improved = self.task.monitored.update(metrics[monitor], epoch)
        self.task.schedule.step_epoch(metrics[monitor])
        self.epoch = epoch
        metrics["epoch"] = epoch
        self.history.append(metrics)
        self._call("on_epoch_end", metrics)
        stop = self.dist.any(signals.requested is not None)[0] if self.dist.enabled else signals.requested
        if stop:  # arrived during validation: the epoch's checkpoint is the place to resume
            signum = self._agreed_signal(signals)
            ckpt = self.checkpoint_callback
            if ckpt is not None:
                ckpt.wait()
            self.dist.barrier()  # every process stops once rank 0's checkpoint is on disk
            raise self._stopped(signum, f"after epoch {epoch}", self._resume_path())

    def _agreed_signal(self, signals: StopSignals) -> int:
        """The signal every process reports: the lowest that reached any of them (one gather, at the stop)."""
        if not self.dist.enabled:
            return signals.requested
        got = [s for s in self.dist.gather_objects(signals.requested) if s is not None]
        return min(got) if got else int(signal.SIGTERM)

    def _resume_path(self) -> Path | None:
        """Where the resume point is (rank 0 writes it; every process names the same path)."""
        ckpt = self.checkpoint_callback
        if ckpt is not None:
            return ckpt.resume_path
        save_last = self.context.config["trainer"]["checkpoint"]["save_last"]
        return self.context.run_dir / CKPT_DIR / "last.ckpt" if self.dist.enabled and save_last else None

    def _stop_mid_epoch(self, train: TrainLoader, epoch: int, seconds: float, signum: int | None) -> None:
        """Write last.ckpt at this step (synchronously) and stop; resuming continues this epoch here.

        Under DDP every process stops after the same step: rank 0 writes one checkpoint holding every process's
        loader position and random state (a resume with the same world size continues each exactly) and the
        running sums of all processes; the others wait until it is on disk, then stop too."""
        own = {"loader": train.state_dict(), "rng": rng_state()}
        ranks = self.dist.gather_objects(own) if self.dist.enabled else None
        signum = self._agreed_signal(self._signals) if self.dist.enabled else signum
        self.tracker.all_reduce(self.dist)
        state = self.state_dict()
        state["partial"] = {"epoch": epoch, "loader": own["loader"], "seconds": seconds, "rng": own["rng"],
                            "tracker": self.tracker.state_dict()}
        if ranks is not None:
            state["partial"].update(ranks=ranks, world_size=self.dist.world_size)
        ckpt = self.checkpoint_callback
        path = ckpt.save_resume_point(state) if ckpt is not None else self._resume_path()
        self.dist.barrier()
        where = f"at epoch {epoch}, step {state['partial']['loader']['batches']}"
        raise self._stopped(signum, where, path)

    def _own_partial(self, partial: dict) -> tuple[dict, dict]:
        """This process's loader position and random state in a mid-epoch checkpoint (rank 0 saved every
        process's). Its shard of the epoch depends on the number of processes, so only the same number can
        continue it; an end-of-epoch checkpoint resumes with any."""
        saved_world = int(partial.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise ConfigError(
                f"the checkpoint was written mid-epoch {partial['epoch']} by {saved_world} process(es), and each "
                f"process's share of an epoch depends on their number: resume it with {saved_world} "
                f"({'torchrun --nproc_per_node=' + str(saved_world) if saved_world > 1 else 'a single process'}). "
                f"Checkpoints written at the end of an epoch resume with any number of processes")
        own = partial["ranks"][self.dist.rank] if "ranks" in partial else partial
        return own["loader"], own["rng"]

    def _stopped(self, signum: int, where: str, path: Path | None) -> TrainingStopped:
        name = signal.Signals(signum).name
        if path is None:
            return TrainingStopped(f"stopped by {name} {where}; no checkpoint written "
                                   f"(trainer.checkpoint.save_last=false)", signum)
        what = f"stopped by {name} {where}; checkpoint written to {path}"
        if self.dist.enabled:
            return TrainingStopped(what, signum, f"Continue with the same launch ({self.dist.world_size} processes) "
                                                 f"and trainer.resume={self.context.run_dir}, e.g. torchrun "
                                                 f"--nproc_per_node={self.dist.world_size} -m cnnlab.train "
                                                 f"trainer.resume={self.context.run_dir}")
        return TrainingStopped(what, signum, f"Continue with: cnnlab-train trainer.resume={self.context.run_dir}")

    def evaluate(self, loader: Iterable, prefix: str, with_confusion: bool = False, num_classes: int | None = None,
                 module: nn.Module | None = None):
        """Loss and top-k accuracy over a split; optionally also the confusion matrix (rows = true class).
        Under DDP each process evaluates its shard and the sums are added up: exact over the whole split.
        module: what to evaluate instead of the model (the averaged weights, see validated_module)."""
        model = self.task.model if module is None else module
        was_training = model.training
        self.dist.broadcast_buffers_(model)  # every process evaluates (and saves) rank 0's batch-norm statistics
        if module is not None:  # and the raw model's (saved as "raw_model"), as when the raw model is evaluated
            self.dist.broadcast_buffers_(self.task.model)
        limit = {"val": self.options.limit_val_batches, "test": self.options.limit_test_batches}.get(prefix)
        if limit and limit < len(loader) and prefix not in self._cut_logged:
            self._cut_logged.add(prefix)
            log.info("%s: only the first %d of %d batches are evaluated (trainer.limit_%s_batches=%d); the %s "
                     "metrics cover only those", prefix, limit, len(loader), prefix, limit, prefix)
        try:
            return evaluate_model(self.eval_model if module is None else module, loader, self.task.loss, prefix,
                                  ks=self.options.topk, limit_batches=limit,
                                  device=self.device, autocast=self._autocast,
                                  channels_last=self.options.channels_last, with_confusion=with_confusion,
                                  dist=self.dist, num_classes=num_classes)
        finally:
            model.train(was_training)

    def test(self, loader: Iterable, classes) -> dict:
        """Final pass on the test split with the best (or last) weights; returns test/* metrics.

        The weights tested are the ones validated: a checkpoint's "model" (the averaged weights when
        trainer.ema / trainer.swa had an average), or the average itself for test_with=last. They are loaded
        into the model, so on_test_end sees the tested weights in `trainer.task.model`."""
        monitored, average = self.task.monitored, self.task.average
        best = self.context.run_dir / CKPT_DIR / "best.ckpt"
        # rank 0 reads best.ckpt and hands its weights to the others (their file system need not share it)
        if self.dist.broadcast_object(self.options.test_with == "best" and best.is_file()):
            if self.dist.is_main:
                try:
                    state = torch.load(best, map_location=self.device, weights_only=True)
                except Exception as bad:  # replaced or damaged since it was written; torch's advice never shown
                    raise RunError(f"{best} cannot be read for the test: {unreadable_reason(bad)}; the run's other "
                                   f"files are kept: evaluate last.ckpt with cnnlab-eval") from None
                self.task.model.load_state_dict(state["model"])
                which = f"{state['average']['kind'].upper()} " if RAW_WEIGHTS in state else ""
                log.info("testing the best %sweights (epoch %s, %s=%.4f)", which, state["epoch"], monitored.monitor,
                         monitored.best if monitored.best is not None else float("nan"))
            self.dist.broadcast_module_(self.task.model)
        elif average is not None and average.active:
            self.task.model.load_state_dict(average.module.state_dict())
            self.dist.broadcast_module_(self.task.model)  # rank 0's averaged buffers, as validation used
            log.info("testing the %s weights of epoch %d", average.kind.upper(), self.epoch)
        metrics, confusion = self.evaluate(loader, "test", with_confusion=True, num_classes=len(classes))
        self.test_loader = loader
        # from the confusion matrix, which is summed over processes: exact under DDP
        averages, per_class = confusion_metrics(confusion, list(classes), "test")
        metrics.update(averages)
        self._call("on_test_end", metrics, confusion, classes)
        metrics.update(per_class)
        metrics["test/confusion_matrix"] = confusion.tolist()
        return metrics

    def teardown(self, after_error: bool = False) -> None:
        """Release what the callbacks hold (event file, checkpoint writer thread, progress bar). After an error,
        a failure while closing (the same full disk) is logged, not raised, so that it does not hide the first."""
        for cb in self.callbacks:
            try:
                cb.teardown(self)
            except OSError as also:
                if not after_error:
                    raise
                log.warning("while stopping: %s", also)

    # ---- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a checkpoint holds. "model" is always the weights validated last: with an active average
        (trainer.ema / trainer.swa) the averaged ones, and then "raw_model" holds the training weights resume
        continues from (cnnlab-eval, -predict and fine-tuning read "model")."""
        task = self.task
        state = {
            "format_version": FORMAT_VERSION,
            "cnnlab_version": __version__,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": task.model.state_dict(),
            "optimizer": task.optimizer.state_dict(),
            "schedule": task.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "monitored": task.monitored.state_dict(),
            "val_acc_best": self.val_acc_best,
            "history": self.history,
            "rng": rng_state(),
            "nonfinite_steps": self.nonfinite_steps,
            "world_size": self.dist.world_size,
            "config": self.context.config,
            "config_hash": config_hash(self.context.config),
        }
        average = task.average
        if average is not None:
            state["average"] = average.state_dict()
            if average.active:
                state[RAW_WEIGHTS] = state["model"]
                state["model"] = average.module.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Everything but the model weights (the raw ones, loaded and checked by the caller) to continue a run."""
        task = self.task
        task.optimizer.load_state_dict(state["optimizer"])
        task.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        task.monitored.load_state_dict(state["monitored"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state.get("history", []))
        self.val_acc_best = state.get("val_acc_best")
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.partial = state.get("partial")
        if self.partial is not None:
            self.partial.setdefault("world_size", int(state.get("world_size", 1)))
            self._own_partial(self.partial)  # refuse another number of processes now, before training starts
        if task.average is not None:  # after the optimizer: SWALR continues from the restored rates
            task.average.load_state_dict(state.get("average"), state["model"] if RAW_WEIGHTS in state else None)
        set_rng_state(state["rng"])


@torch.inference_mode()
def evaluate_model(model: nn.Module, loader, loss, prefix: str, *, ks=(1, 5), device, autocast=contextlib.nullcontext,
                   channels_last: bool = False, with_confusion: bool = False, dist=None, num_classes=None,
                   limit_batches: int | None = None):
    """One pass over `loader` in eval mode: {prefix}/loss, {prefix}/acc, {prefix}/acc_top<k> (and confusion).
    limit_batches: only the first N batches (trainer.limit_val_batches / limit_test_batches smoke runs).

    dist: under DDP the loader yields this process's shard; sums and counts are added over all processes
    (num_classes sizes the confusion matrix of a process whose shard is empty)."""
    model.eval()
    tracker = MetricTracker(ks, device)
    confusion = None
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

