"""Which commit of cnnlab's own source tree is running, when it runs from a git checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(short: bool = False, dirty: bool = True) -> dict | None:
    """{"commit": HEAD's hash (abbreviated when `short`), "dirty": whether tracked files have local changes
    (only when `dirty`)}; None outside a git checkout or when git is missing, fails or takes over 5 s."""
    src = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", *(["--short"] if short else []), "HEAD"],
                                capture_output=True, text=True, timeout=5)
        if commit.returncode != 0 or not commit.stdout.strip():
            return None
        info = {"commit": commit.stdout.strip()}
        if dirty:
            changes = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                     capture_output=True, text=True, timeout=5)
            info["dirty"] = bool(changes.stdout.strip())
        return info
    except (OSError, subprocess.SubprocessError):
        return None
