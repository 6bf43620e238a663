"""One training step: forward and backward, accumulation windows, the AMP scaler, gradient clipping, non-finite loss."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn

from cnnlab.engine.safety import divergence_message
from cnnlab.errors import RunError

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


class StepMechanics:
    """The Trainer's per-batch work (cnnlab.engine.trainer.Trainer inherits it): `train_step` and what it needs.

    Reads the Trainer's task, options, scaler, dist, ddp, forward_model, first_step, epoch_steps and global_step;
    sets `stepped`, counts `nonfinite_steps`, and keeps the accumulation window's verdict in `_window_bad`.
    """

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
