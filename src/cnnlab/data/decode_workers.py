"""Decode a list of image files in parallel, straight into the rows of one preallocated uint8 array (N, C, H, W).

Worker *processes*, not threads: for small JPEGs most of the time is Python around Pillow's decoder, which holds
the GIL. The array lives in a shared mapping (the cache's .npy file opened for writing, or an anonymous shared
mmap) that the workers inherit by fork, so each writes its rows in place and no pixels are pickled; a worker
returns only the rows it could not read. Workers run Pillow and numpy only: torch's OpenMP pool is not safe to
use after fork.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from cnnlab.data.decoding import UnreadableImage, read_pixels
from cnnlab.engine.progress import resolve_progress_mode

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0          # a progress line in the log this often, bar or not
MIN_ROWS_PER_PROCESS = 8    # fewer images than this per worker: not worth forking one
CHUNK_MAX = 256             # rows per task: small enough for an even spread and a live bar, large enough to be cheap

# The job the forked workers inherit (set in the parent just before the pool forks them).
_JOB: tuple | None = None


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity, which a scheduler or container may restrict)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def can_fork() -> bool:
    """Worker processes can be forked here: fork exists, and this is no daemonic process (a pool's worker),
    which may not start children."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def worker_count(n: int) -> int:
    """Processes for decoding n images: every CPU, but none forked for fewer than MIN_ROWS_PER_PROCESS each."""
    return max(1, min(cpu_count(), n // MIN_ROWS_PER_PROCESS)) if can_fork() else 1


def shared_array(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array in an anonymous shared mapping: forked workers write into the parent's pages."""
    import mmap

    nbytes = int(np.prod(shape))
    buffer = mmap.mmap(-1, max(1, nbytes))  # MAP_SHARED | MAP_ANONYMOUS; the array keeps it alive
    return np.frombuffer(buffer, dtype=np.uint8, count=nbytes).reshape(shape)


def _decode_rows(start: int, stop: int) -> list[tuple[int, str]]:
    files, channels, size, mode, out = _JOB
    bad = []
    for row in range(start, stop):
        try:
            out[row] = read_pixels(files[row], channels, size, mode).transpose(2, 0, 1)
        except UnreadableImage as error:
            out[row] = 0
            bad.append((row, str(error)))
    return bad


def _start_worker(parent: int, close_fds: tuple[int, ...]) -> None:
    """A forked worker: Ctrl-C is the parent's to handle (it stops the pool); the descriptors it must not hold
    (the cache entry's lock: a worker outliving its parent would keep it locked) are closed; and it dies with
    its parent (Linux's PR_SET_PDEATHSIG), where it would otherwise wait on the task queue forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def _chunks(n: int, processes: int) -> list[tuple[int, int]]:
    size = max(1, min(CHUNK_MAX, -(-n // (processes * 8))))
    return [(start, min(n, start + size)) for start in range(0, n, size)]


class _Progress:
    """A tqdm bar with ETA on a terminal (stderr), and a log line every LOG_EVERY_S seconds in any case."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done = total, what, 0
        self.start = self.last_log = time.monotonic()
        self.bar = None
        if sys.stderr is not None and resolve_progress_mode("auto", sys.stderr) == "bar":  # as trainer.progress=auto
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="decoding images", unit="img", leave=False, dynamic_ncols=True,
                            file=sys.stderr)

    def advance(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY_S and self.done < self.total:
            self.last_log = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info("decoded %d/%d images into %s (%.0f img/s, about %.0f s left)", self.done, self.total,
                     self.what, rate, (self.total - self.done) / max(rate, 1e-9))

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return time.monotonic() - self.start


def decode_into(out: np.ndarray, files: list[Path], channels: int, size: tuple[int, int], mode: str,
                processes: int, what: str, close_fds: tuple[int, ...] = ()) -> dict[int, str]:
    """Decode files[i] into out[i] (uint8 (C, H, W) rows) with `processes` worker processes (1: in this process).

    `out` must be a shared mapping when processes > 1 (a MAP_SHARED .npy memmap or `shared_array`). Returns
    {row: message} for the files that could not be read (their rows are zero). `what` names the target in the
    progress lines; `close_fds` are descriptors of this process the workers close (a lock held here).
    """
    global _JOB
    n = len(files)
    progress = _Progress(n, what)
    bad: dict[int, str] = {}
    done = False
    _JOB = (files, channels, tuple(size), mode, out)
    try:
        if processes <= 1 or not can_fork():
            for start, stop in _chunks(n, 1):
                bad.update(_decode_rows(start, stop))
                progress.advance(stop - start)
            done = True
            return bad
        pool = cf.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"),
                                      initializer=_start_worker, initargs=(os.getpid(), tuple(close_fds)))
        try:
            pending = {pool.submit(_decode_rows, start, stop): stop - start for start, stop in _chunks(n, processes)}
            while pending:
                finished, _ = cf.wait(pending, timeout=1.0, return_when=cf.FIRST_COMPLETED)
                for future in finished:
                    bad.update(future.result())
                    progress.advance(pending.pop(future))
                if not finished:
                    progress.advance(0)
        except cf.process.BrokenProcessPool:
            raise OSError(f"a process decoding images into {what} died (out of memory, or a signal)") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        done = True
        return bad
    finally:
        _JOB = None
        seconds = progress.close()
        if done:
            log.info("decoded %d images into %s in %.1f s (%.0f img/s)", n, what, seconds, n / max(seconds, 1e-9))
