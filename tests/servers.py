"""A real server (TensorBoard, an MLflow tracking server) started on 127.0.0.1 by a test: a free port, started,
waited for until it answers, stopped after."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(log_path: Path) -> str:
    return Path(log_path).read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def serving(command: list[str], log_path: Path, ready: Callable[[], bool], deadline_s: float, name: str,
            env: dict | None = None):
    """Start `command` (output to `log_path`), poll `ready()` until it returns true (an OSError or ValueError
    it raises counts as not yet), yield the process, then stop it: SIGTERM, SIGKILL after 10 s. A server that
    exits or is not ready within `deadline_s` fails the test with the end of its log."""
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + deadline_s
        last_error = None
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{tail(log_path)}")
            try:
                if ready():
                    break
            except (OSError, ValueError) as exc:  # urllib's URLError and ConnectionError are OSErrors
                last_error = exc
            if time.monotonic() > deadline:
                pytest.fail(f"{name} not ready after {deadline_s}s ({last_error!r}):\n{tail(log_path)}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
