"""Checkpoint writes off the training thread: snapshot now, serialise and fsync in the background.

Training mutates parameters in place, so the state is copied first (cheap next to an epoch); the
background thread then writes each target atomically. A run killed mid-write leaves the previous
file intact, because the rename happens only after the new file is complete and synced.
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from cnnlab.engine.checkpoint import link_atomic, write_bytes_atomic


log = logging.getLogger("cnnlab")

_PLAIN = frozenset({int, float, str, bool, type(None)})


def snapshot(obj):
    """A copy of a (nested) state dict whose tensors no longer alias the live model and optimizer."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        copied = type(obj)((k, snapshot(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # module state dicts carry versions that load_state_dict reads
            copied._metadata = obj._metadata
        return copied
    if isinstance(obj, (list, tuple)):
        if all(type(v) in _PLAIN for v in obj):  # e.g. the Python RNG state's 625 ints: no walk per element
            return obj if type(obj) is tuple else type(obj)(obj)
        return type(obj)(snapshot(v) for v in obj)
    return obj


class CheckpointWriter:
    """One background thread; writes happen in submission order. Errors surface at the next submit or wait."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnlab-ckpt")
        self._pending: list[Future] = []

    def submit(self, state: dict, paths: list[Path]) -> None:
        self._raise_finished_errors()
        frozen = snapshot(state)
        self._pending.append(self._pool.submit(self._write, frozen, [Path(p) for p in paths]))

    @staticmethod
    def _write(state: dict, paths: list[Path]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)  # serialise once, even when best and last get the same state
        try:
            write_bytes_atomic(buffer.getvalue(), paths[0])
            for path in paths[1:]:
                link_atomic(paths[0], path)
        except OSError as bad:
            bad.filename = bad.filename or str(paths[0])  # so the error message can name the file
            raise

    def remove(self, paths: list[Path]) -> None:
        """Delete files once every write submitted before is on disk (a replaced top-k checkpoint goes only
        after its successor is complete). A failed deletion is a warning: training goes on."""
        self._raise_finished_errors()
        self._pending.append(self._pool.submit(self._remove, [Path(p) for p in paths]))

    @staticmethod
    def _remove(paths: list[Path]) -> None:
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as bad:
                log.warning("could not delete %s: %s", path, bad)

    def _raise_finished_errors(self) -> None:
        still = []
        for future in self._pending:
            if future.done():
                future.result()
            else:
                still.append(future)
        self._pending = still

    def wait(self) -> None:
        """Block until every submitted checkpoint is on disk; re-raise the first write error."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
