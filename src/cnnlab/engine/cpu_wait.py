"""How long this process's threads waited for a CPU that other processes held, so that an epoch slowed by a
neighbour is reported as such instead of as the model's or the optimizer's time.

torch's CPU threads (OpenMP) spin at the end of every parallel region until all of them arrive. When another
process takes one of the cores, every region waits for the descheduled thread's next time slice: with 2 torch
threads on 2 busy cores an epoch took 10-40x its idle-machine time, with 1 thread about 2x (docs/training.md,
"Epoch times and other processes"). A run that starts while a previous job, a sweep's next process or a
compilation still runs gets a slow first epoch that says nothing about its configuration.

Linux counts, per thread, the time it was runnable but not running (/proc/<pid>/task/<tid>/schedstat, the second
field, in ns). Elsewhere the measure is unavailable and nothing is reported.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("cnnlab")

_TASKS = Path("/proc/self/task")

# An epoch whose threads waited longer than this share of (wall time x torch threads), and at least MIN_LOST_S per
# thread, ran on a busy machine: the floor keeps a tenth of a second lost by a half-second epoch from alarming.
# Measured on 2 cores: 0.00-0.03 idle; at a load average of 9, 0.47 with 1 torch thread and 0.75 with 2.
CONTENDED_SHARE = 0.2
MIN_LOST_S = 0.5


def runqueue_wait_s() -> float | None:
    """Seconds this process's live threads have waited for a CPU so far; None where Linux's schedstat is absent."""
    if not _TASKS.is_dir():
        return None
    total = 0
    found = False
    for task in _TASKS.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
            found = True
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile, or a kernel without schedstat
            continue
    return total / 1e9 if found else None


class CpuWait:
    """Measures the wait over one stretch (an epoch) and warns once per run when it was contended."""

    def __init__(self) -> None:
        self._start: float | None = None
        self.warned = False

    def start(self) -> None:
        self._start = runqueue_wait_s()

    def stop(self) -> float | None:
        """The wait since start(), in seconds summed over the threads (threads that ended meanwhile drop out)."""
        now = runqueue_wait_s()
        if self._start is None or now is None:
            return None
        return max(0.0, now - self._start)

    def check(self, epoch: int, seconds: float, wait_s: float | None) -> None:
        """Warn (once) when the epoch's threads spent more than CONTENDED_SHARE of it waiting for a CPU."""
        if self.warned or not contended(seconds, wait_s):
            return
        self.warned = True
        threads = _torch_threads()
        load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" if hasattr(os, "getloadavg") else ""
        log.warning("epoch %d took %.1f s, and this process's %d torch thread%s waited %.1f s of it for a CPU that "
                    "other processes held (%s): its time measures the machine, not the run. Every epoch's wait is "
                    "recorded as time/cpu_wait_s. Compare times of runs on an idle machine, or give concurrent "
                    "runs fewer threads (OMP_NUM_THREADS=1).", epoch, seconds, threads, "s" if threads > 1 else "",
                    wait_s, load)


def contended(seconds: float, wait_s: float | None) -> bool:
    """Whether an epoch of `seconds` whose threads waited `wait_s` ran on a busy machine."""
    share = contended_share(seconds, wait_s)
    return share is not None and share > CONTENDED_SHARE and wait_s / _torch_threads() >= MIN_LOST_S


def contended_share(seconds: float, wait_s: float | None) -> float | None:
    """The share of the epoch's thread time spent waiting for a CPU (0 on an idle machine)."""
    if wait_s is None or seconds <= 0:
        return None
    return wait_s / (seconds * _torch_threads())


def _torch_threads() -> int:
    import torch  # here, not at import: lab pages read CONTENDED_SHARE without loading torch

    return max(1, torch.get_num_threads())


def run_timing(history: list[dict]) -> dict:
    """metrics.json's training time: the epochs' seconds summed (time/train_s) and, where measured, their CPU wait
    (time/cpu_wait_s) and its share of the threads' time (time/cpu_wait_share: above CONTENDED_SHARE, the run's
    times measure the machine)."""
    seconds = sum(e.get("time/epoch_s", 0.0) for e in history)
    out = {"time/train_s": seconds}
    waits = [e["time/cpu_wait_s"] for e in history if "time/cpu_wait_s" in e]
    if waits and len(waits) == len(history):
        out["time/cpu_wait_s"] = sum(waits)
        out["time/cpu_wait_share"] = contended_share(seconds, sum(waits)) or 0.0
    return out
