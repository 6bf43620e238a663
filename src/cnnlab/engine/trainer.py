"""The training loop: fit on train, validate every epoch, checkpoint, stop early, test with the best weights."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from cnnlab.engine.batchnorm import recompute_batchnorm, trained_norms
from cnnlab.engine.callbacks import Callback, CheckpointKeeper, overrides
from cnnlab.engine.checkpoint import CKPT_DIR, RAW_WEIGHTS, unreadable_reason
from cnnlab.engine.cpu_wait import CpuWait
from cnnlab.engine.evaluation import evaluate_model, evaluate_split
from cnnlab.engine.interruption import StopAndResume
from cnnlab.engine.metrics import MetricTracker
from cnnlab.engine.safety import StopSignals, divergence_message
from cnnlab.engine.seeding import derived_generator, set_rng_state
from cnnlab.engine.stepping import StepMechanics, steps_per_epoch
from cnnlab.engine.task import RunContext, Task, TrainerOptions, TrainLoader
from cnnlab.errors import ConfigError, RunError

log = logging.getLogger("cnnlab")


class Trainer(StepMechanics, StopAndResume):
    """Runs one training task: fit on train, validate every epoch, checkpoint, stop early, test with the best
    weights.

    Given (see cnnlab.engine.task):
      task         what is trained: model, optimizer, LR schedule, loss, monitored metric, freezer
      options      how the loop runs (TrainerOptions, from cfg.trainer)
      context      where: device, precision, run dir, seed, the resolved config checkpoints carry
      callbacks    what happens around the loop, called in list order at the moments cnnlab.engine.callbacks
                   lists (TensorBoard, checkpoint files, progress, early stopping)
      checkpoints  who keeps the checkpoint files (cnnlab.engine.callbacks.CheckpointKeeper): asked for a resume
                   point when a stop request arrives, and what a failed run leaves; None: a stop writes nothing

    An epoch is `_train_epoch` (its steps) followed by validation and `_end_epoch` (record, callbacks, stop
    decisions). The per-step path is what a hand-written loop does plus on-device metric sums, one read of the
    loss for the divergence check, and only the callbacks that have per-step work, so the engine costs next
    to nothing over plain PyTorch (see scripts/benchmark.py). One step's mechanics are StepMechanics'
    (cnnlab.engine.stepping), stops and resume points StopAndResume's (cnnlab.engine.interruption).
    """

    def __init__(self, task: Task, options: TrainerOptions, context: RunContext, callbacks: Sequence[Callback] = (),
                 checkpoints: CheckpointKeeper | None = None):
        self.task = task
        self.options = options
        self.context = context
        self.callbacks = list(callbacks)
        self.checkpoints = checkpoints
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
        self._bn_recalibrate_said = ""  # trainer.bn_recalibrate's one log line: "" (not yet) | done | none
        self.improved = False     # the epoch just ended set a new best of the monitored metric
        self.should_stop = False  # set by a callback: stop after this epoch
        self.stopped_early = False
        self.cpu_wait = CpuWait()  # time/cpu_wait_s: an epoch slowed by other processes says so
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

    def _call(self, moment: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, moment)(self, *args)

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
            self._recalibrate(train, epoch)
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
        with self._autocast(), self._replaying(train):
            average.after_epoch(self.task.model, epoch, lambda: self._train_inputs(train, epoch), self.dist)

    def _recalibrate(self, train: TrainLoader, epoch: int) -> None:
        """trainer.bn_recalibrate=N: the batch-norm statistics of what validation measures (the model, or the
        EMA's weights) recomputed over the first N training batches of the epoch just trained
        (cnnlab.engine.batchnorm). An active SWA average recomputed its own over the epoch (_average_epoch)."""
        n = self.options.bn_recalibrate
        average = self.task.average
        if not n or (average is not None and average.kind == "swa" and average.active):
            return
        module = self.validated_module() or self.task.model
        names = trained_norms(self.task.model)  # again each time: fine-tuning may unfreeze some
        if not names:
            if not self._bn_recalibrate_said:
                self._bn_recalibrate_said = "none"
                log.info("trainer.bn_recalibrate=%d: the model has no batch norm whose statistics training "
                         "updates (none, or all frozen); nothing to recalibrate", n)
            return
        limit = min(n, self.steps_per_epoch(train))
        start = time.perf_counter()
        with self._autocast(), self._replaying(train):
            batches, images, layers = recompute_batchnorm(
                module, itertools.islice(self._train_inputs(train, epoch), limit), self.dist, names)
        if self._bn_recalibrate_said != "done":
            self._bn_recalibrate_said = "done"
            per = f" per process, averaged over {self.dist.world_size} processes" if self.dist.enabled else ""
            log.info("trainer.bn_recalibrate=%d: before each validation, the running statistics of %d batch-norm "
                     "layers%s are recomputed over %d training batches (%d images%s): %.2f s the first time", n,
                     layers, " of the EMA weights" if module is not self.task.model else "", batches, images, per,
                     time.perf_counter() - start)

    def _train_inputs(self, train: TrainLoader, epoch: int):
        """The inputs of epoch `epoch`'s training batches again, from the first, as the steps received them.

        The passes that read them run the network under the run's autocast; the batches themselves are made
        with autocast paused, as the steps' loader makes them (a colour jitter's baddbmm under bf16 autocast
        would round the pixels, and the batch-norm statistics would describe other inputs)."""
        train.set_epoch(epoch)
        batches, device_type = iter(train), self.device.type
        while True:
            with torch.autocast(device_type, enabled=False):
                batch = next(batches, None)
            if batch is None:
                return
            x = batch[0]
            yield x.contiguous(memory_format=torch.channels_last) if self.options.channels_last else x

    @contextlib.contextmanager
    def _replaying(self, train: TrainLoader):
        """Around a pass over training batches outside the steps: the random streams and the loader's count of
        skipped files are left as they were, so that training continues exactly as without the pass."""
        skipped = train.skipped
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            yield
        train.skipped = skipped

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
        self.cpu_wait.start()
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
        wait_s = self.cpu_wait.stop()
        if wait_s is not None:
            metrics["time/cpu_wait_s"] = wait_s
            self.cpu_wait.check(epoch, seconds, wait_s)
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
        self._stop_after_epoch(epoch, signals)

    def evaluate(self, loader: Iterable, prefix: str, with_confusion: bool = False, num_classes: int | None = None,
                 module: nn.Module | None = None):
        """Loss and top-k accuracy over a split; optionally also the confusion matrix (rows = true class).
        Under DDP each process evaluates its shard and the sums are added up: exact over the whole split.
        module: what to evaluate instead of the model (the averaged weights, see validated_module)."""
        with self._evaluating(loader, prefix, module) as (model, settings):
            return evaluate_model(model, loader, self.task.loss, prefix, with_confusion=with_confusion,
                                  num_classes=num_classes, **settings)

    @contextlib.contextmanager
    def _evaluating(self, loader: Iterable, prefix: str, module: nn.Module | None = None):
        """Around an evaluation pass: rank 0's buffers on every process, the trainer.limit_*_batches cut said once,
        and train mode restored after. Yields the module to run and the evaluation settings of the run."""
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
            yield (self.eval_model if module is None else module,
                   dict(ks=self.options.topk, limit_batches=limit, device=self.device, precision=self.context.precision,
                        channels_last=self.options.channels_last, dist=self.dist))
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
        # the evaluation cnnlab-eval runs; the confusion matrix is summed over processes: exact under DDP
        with self._evaluating(loader, "test") as (model, settings):
            report = evaluate_split(model, loader, self.task.loss, "test", classes, **settings)
        self.test_loader = loader
        metrics = report.metrics
        self._call("on_test_end", metrics, report.confusion, classes)
        metrics.update(report.per_class)
        metrics["test/confusion_matrix"] = report.confusion.tolist()
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
