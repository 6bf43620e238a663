"""Finding the processes a command started, for tests that kill one of them (a torchrun rank, a sweep job)."""

from __future__ import annotations

from pathlib import Path


def torchrun_worker_pids(parent: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (its children with RANK in their environment)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(proc.name)
    return found
