"""Console progress: a live bar on a terminal or in a Jupyter notebook (tqdm's widget), plain log lines elsewhere
(CI, redirects, Hydra's log file)."""

from __future__ import annotations

import importlib.util
import logging
import sys
import time

from tqdm import tqdm

from cnnlab.engine.cpu_wait import contended, contended_share

log = logging.getLogger("cnnlab")


def notebook_tqdm():
    """tqdm's notebook widget (tqdm.notebook.tqdm) when this process is a Jupyter kernel that can show one
    (ipywidgets installed), else None. A kernel's stderr is no terminal, so without it `auto` means plain lines."""
    if "ipykernel" not in sys.modules:  # never true in a command: nothing is imported to find out
        return None
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None or "IPKernelApp" not in shell.config or importlib.util.find_spec("ipywidgets") is None:
            return None
        from tqdm.notebook import tqdm as widget
    except Exception:  # an IPython or tqdm that does not fit: plain lines, as before
        return None
    return widget


def resolve_progress_mode(mode: str, stream=None) -> str:
    """`trainer.progress` (one of cnnlab.config.fields.Progress) with auto decided by the stream (and a bar in a
    Jupyter notebook that can show tqdm's widget)."""
    if mode == "auto":
        stream = stream or sys.stderr
        if notebook_tqdm() is not None:
            return "bar"
        return "bar" if hasattr(stream, "isatty") and stream.isatty() else "plain"
    return mode


class Progress:
    """Per-step updates are cheap: the running loss/accuracy are read (one device sync) at most twice a second."""

    REFRESH_S = 0.5

    def __init__(self, mode: str, max_epochs: int, log_every_n_steps: int = 0):
        self.mode = resolve_progress_mode(mode)
        self.max_epochs = max_epochs
        self.log_every = int(log_every_n_steps)
        self.bar = None
        self._last = 0.0

    def start_epoch(self, epoch: int, steps: int, first_step: int = 0) -> None:
        """first_step: the steps of this epoch already done (an epoch resumed mid-way counts on from there)."""
        self.epoch, self.steps, self.step = epoch, steps, first_step
        self._last = time.monotonic()
        if self.mode == "bar":
            bar = notebook_tqdm() or tqdm
            self.bar = bar(total=steps, initial=first_step, desc=f"epoch {epoch}/{self.max_epochs}", leave=False,
                           dynamic_ncols=True, file=sys.stderr, unit="batch")

    def update(self, tracker) -> None:
        self.step += 1
        if self.mode == "bar":
            now = time.monotonic()
            if now - self._last >= self.REFRESH_S:
                self._last = now
                self.bar.set_postfix(self._running(tracker), refresh=False)
            self.bar.update(1)
        elif self.mode == "plain" and self.log_every and self.step % self.log_every == 0:
            stats = self._running(tracker)
            log.info("epoch %d/%d  step %d/%d  loss %s  acc %s", self.epoch, self.max_epochs, self.step, self.steps,
                     stats["loss"], stats["acc"])

    @staticmethod
    def _running(tracker) -> dict[str, str]:
        loss, acc = tracker.running()
        return {"loss": f"{loss:.4f}", "acc": f"{acc:.4f}"}

    def end_epoch(self, epoch: int, metrics: dict, seconds: float, improved: bool) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode == "none":
            return
        parts = [f"epoch {epoch}/{self.max_epochs}"]
        for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
            if key in metrics:
                parts.append(f"{key} {metrics[key]:.4f}")
        parts.append(f"lr {metrics.get('lr', float('nan')):.3g}")
        parts.append(f"{seconds:.1f}s ({metrics.get('throughput/img_s', 0):.0f} img/s)")
        wait_s = metrics.get("time/cpu_wait_s")
        if contended(seconds, wait_s):
            parts.append(f"[CPU busy: threads waited {contended_share(seconds, wait_s):.0%} of the time]")
        if improved:
            parts.append("*best*")
        log.info("  ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
