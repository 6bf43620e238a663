"""What keeps a long run safe: stop requests from signals, divergence checks, and the messages for the
failures a user can act on (out of memory, full disk). See docs/reliability.md."""

from __future__ import annotations

import logging
import os
import signal
import threading

import torch

from cnnlab.errors import RunError, write_failure

log = logging.getLogger("cnnlab")



class StopSignals:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second signal stops at once. In a job of
    submitit's (SLURM), SIGUSR2 too: what the cluster sends `signal_delay_s` before the time limit.

    The handlers exist only inside the `with` block and only in the main thread (signals cannot be
    handled elsewhere); the previous handlers come back on exit.
    """

    SIGNALS = ("SIGINT", "SIGTERM")
    SUBMITIT_SIGNALS = ("SIGUSR2",)  # submitit's own handler would only log it for a job that is not checkpointable

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: int | None = None
        self._previous = {}
        self._pid = os.getpid()

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:  # a forked DataLoader worker inherited the handler: the parent decides
            return
        if self.requested is not None:  # second signal: the system's default action (terminate), now
            log.warning("second %s: stopping at once, without a checkpoint", signal.Signals(signum).name)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested = signum
        log.warning("%s received: finishing the current step, then writing a checkpoint and stopping "
                    "(send it again to stop at once)", signal.Signals(signum).name)

    def __enter__(self):
        if self.enabled:
            names = self.SIGNALS + (self.SUBMITIT_SIGNALS if "SUBMITIT_EXECUTOR" in os.environ else ())
            for name in names:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False


DIVERGENCE_HINTS = ("the learning rate is too high (lower optimizer.lr, or add scheduler.warmup_epochs)",
                    "the inputs are not normalised (check data.mean / data.std)",
                    "a bad weight initialisation (model.init) or a missing batch norm",
                    "fp16 overflow (trainer.precision=bf16, or trainer.grad_clip=1.0)")


def divergence_message(what: str, epoch: int, step: int, global_step: int, kept: str) -> str:
    causes = "; ".join(DIVERGENCE_HINTS)
    return (f"training diverged: {what} at epoch {epoch}, step {step} (global step {global_step}). Usual causes: "
            f"{causes}. {kept} Set trainer.nonfinite=skip to skip such steps instead of stopping.")


def out_of_memory_message(where: str, batch_size: int | None, precision: str, kept: str) -> str:
    smaller = f"data.batch_size={max(1, batch_size // 2)}" if batch_size else "a smaller data.batch_size"
    amp = "" if precision in ("bf16", "fp16") else ", mixed precision (trainer.precision=bf16, or fp16 on CUDA)"
    return (f"out of memory during {where}: try {smaller}{amp}, a smaller data.input_size or model, or "
            f"trainer.channels_last=true on CUDA. {kept}")


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return (isinstance(error, torch.OutOfMemoryError) or "out of memory" in text
            or "can't allocate memory" in text)  # the CPU allocator's wording


def disk_message(path, error: OSError, kept: str) -> str:
    return (f"could not write {path}: {write_failure(error)} ({error.__class__.__name__}: {error}). Free some space or point "
            f"paths.output_root elsewhere, then resume with trainer.resume=<run dir>. {kept}")


def raise_run_error(message: str, cause: BaseException):
    raise RunError(message) from cause
