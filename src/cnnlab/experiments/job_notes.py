"""Notes in a sweep dir about jobs that left no record in a dir of their own, read by the sweep's summary."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

NOTE_PREFIX = ".cnnlab-job-"   # <sweep dir>/.cnnlab-job-<sweep token>-<job>.json: a job that left no record in a dir
SWEEP_TOKEN = "CNNLAB_SWEEP_TOKEN"   # of its own; read and deleted by the summary of the sweep that wrote it

log = logging.getLogger("cnnlab")


def note_job(sweep_dir: Path, num, job_dir: Path, error: str, overrides: list[str], what: str) -> None:
    """A job that left no record in a dir of its own (`what`: refused, its dir holding another run; died, its
    worker process killed): noted in the sweep dir, read and deleted by this sweep's summary."""
    token = os.environ.get(SWEEP_TOKEN)
    if not token:
        return
    note = Path(sweep_dir) / f"{NOTE_PREFIX}{token}-{num}.json"
    try:
        note.write_text(json.dumps({"job": str(num), "job_dir": escaped(job_dir), "error": escaped(error),
                                    "overrides": [escaped(o) for o in overrides], "what": what}, indent=2) + "\n")
    except OSError as bad:
        log.warning("could not note job %s in %s: %s", num, note, bad)


def noted_jobs(sweep_dir: Path) -> list[dict]:
    """The notes of this sweep's jobs that left no record of their own (deleted once read)."""
    token = os.environ.get(SWEEP_TOKEN)
    if not token or not Path(sweep_dir).is_dir():
        return []
    notes = []
    for path in sorted(Path(sweep_dir).glob(f"{NOTE_PREFIX}{token}-*.json")):
        try:
            notes.append(json.loads(path.read_text()))
            path.unlink()
        except (OSError, ValueError):
            continue
    return sorted(notes, key=lambda n: int(n["job"]) if str(n.get("job")).isdigit() else 0)


def escaped(path) -> str:
    """A path as text that can always be written: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")
