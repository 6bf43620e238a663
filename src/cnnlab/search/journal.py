"""The study's default storage: Optuna's journal file in the study dir, made to survive a write cut short."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from cnnlab.errors import ConfigError, RunError, first_line
from cnnlab.search.locks import FileLock

JOURNAL_NAME = "study.journal"

log = logging.getLogger("cnnlab.search.storage")  # the study storage's logger, as its messages were named


def open_journal(study_dir: Path, *, read_only: bool = False) -> JournalStorage:
    """The study's journal file. read_only: for reading results (cnnlab-compare): nothing is created, and the
    file must exist."""
    # A journal rather than SQLite: SQLite with several concurrent writers fails with 'database is locked'.
    # Appends take a flock (not Optuna's lock files, which a SIGKILLed writer leaves behind for a 30 s grace).
    path = Path(study_dir) / JOURNAL_NAME
    if not read_only:
        study_dir.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path}: not a file (the study's journal file goes there); move it away, or name "
                          f"another study dir")
    if read_only and not path.is_file():
        raise ConfigError(f"{path}: no such file: the study's journal (study.yaml says storage: null)")
    backend = Journal(path, FileLock(path.with_name(path.name + ".lock")), read_only=read_only)
    backend.settle_torn_end()
    try:
        return JournalStorage(backend)
    except OSError as bad:
        raise ConfigError(f"{path}: cannot be read ({bad.strerror or first_line(bad)})") from None


class Journal(JournalFileBackend):
    """Optuna's journal file, made to survive a write cut short (a full disk, a killed writer):

    - A last line without its newline is what such a write leaves. Reading stops before it (as Optuna does:
      it may also be another worker's append in progress); the next append, under the lock (so no append is in
      progress), cuts it off with a warning, so a new record never glues onto it. An append that fails
      (ENOSPC) cuts its own partial line off at once and is a RunError.
    - A complete line that is not a JSON record (a corrupt, cut or binary line in the middle) is a ConfigError
      naming the file and line, never a JSONDecodeError: the study cannot be read reliably past it.
    """

    def __init__(self, path: Path, lock: FileLock, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self._file_path = str(path)
        self._lock = lock
        self._log_number_offset = {0: 0}
        if not read_only and not self.path.exists():
            self.path.touch()

    def read_logs(self, log_number_from: int):
        try:
            f = open(self.path, "rb")
        except OSError as bad:
            raise ConfigError(f"{self.path}: cannot be read ({bad.strerror or first_line(bad)})") from None
        with f:
            remaining = os.fstat(f.fileno()).st_size
            start = 0
            if log_number_from in self._log_number_offset:
                f.seek(self._log_number_offset[log_number_from])
                start = log_number_from
                remaining -= self._log_number_offset[log_number_from]
            for number, line in enumerate(f, start=start):
                remaining -= len(line)
                if remaining < 0 or not line.endswith(b"\n"):
                    break  # an append in progress, or one cut short: not a record (yet)
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict) or "op_code" not in record:
                    raise ConfigError(
                        f"{self.path}: line {number + 1} is not a journal record (the file was damaged or edited); "
                        f"the study cannot be read past it. Restore the file from a backup, or move the study dir "
                        f"away and start the study again (its trials' run dirs stay readable by cnnlab-compare)")
                self._log_number_offset.setdefault(number + 1, self._log_number_offset[number] + len(line))
                if number >= log_number_from:
                    yield record

    def torn_end(self) -> int | None:
        """The size of the file up to its last complete line when a cut-short line follows it, else None."""
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return None
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return None
                step, end = 1 << 16, size
                while end > 0:
                    begin = max(0, end - step)
                    f.seek(begin)
                    chunk = f.read(end - begin)
                    at = chunk.rfind(b"\n")
                    if at >= 0:
                        return begin + at + 1
                    end = begin
                return 0
        except OSError:
            return None

    def settle_torn_end(self) -> None:
        """Cut off a line left unfinished by a write that failed (under the lock: not an append in progress),
        with a warning; when read only, only say that it is ignored."""
        if self.torn_end() is None:
            return
        if self.read_only:
            log.warning("%s: its last line is unfinished (a write cut short, or an append in progress); the study "
                        "is read up to the record before it", self.path)
            return
        with self._lock:
            self._cut_torn_end()

    def _cut_torn_end(self) -> None:
        keep = self.torn_end()
        if keep is None:
            return
        size = self.path.stat().st_size
        os.truncate(self.path, keep)
        log.warning("%s: its last record was cut short (%d bytes; a write that did not finish, e.g. on a full "
                    "disk): it is removed and the study goes on from the last complete record", self.path,
                    size - keep)

    def append_logs(self, logs: list[dict]) -> None:
        if self.read_only:
            raise RunError(f"{self.path}: opened for reading only")
        data = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in logs).encode("utf-8")
        with self._lock:
            self._cut_torn_end()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError as bad:
                    try:
                        os.ftruncate(fd, start)  # frees the space it took; never a half record left
                    except OSError:
                        pass  # the next append cuts it off
                    raise RunError(
                        f"cannot write the study's journal {self.path} ({bad.strerror or first_line(bad)}); the "
                        f"study is kept up to its last complete record. Free space (or fix the file system) and run "
                        f"the same command again to continue the study") from None
            finally:
                os.close(fd)
