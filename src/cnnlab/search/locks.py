"""The study lock that makes taking a trial slot atomic: this machine's flock, plus PostgreSQL's advisory lock
across machines."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from optuna.storages import BaseStorage

LOCK_NAME = "study.lock"
ADVISORY_LOCK_KEY = 0x636E6E6C6162  # 'cnnlab': the PostgreSQL advisory lock of trial slots


class FileLock:
    """An exclusive `fcntl.flock` on a file, held per thread; usable as `with lock:` and as the journal's
    lock object (acquire/release). The kernel drops it when its holder dies, so a killed worker never leaves
    the study locked."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._held = threading.local()

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._held.fd = fd
        return True

    def release(self) -> None:
        fd, self._held.fd = self._held.fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class StudyLock:
    """The lock that makes `trial_slot` and `recover_interrupted` atomic: this machine's flock, then the
    database's advisory lock where the storage is PostgreSQL."""

    def __init__(self, file_lock: FileLock, engine=None):
        self.file_lock = file_lock
        self.engine = engine
        self._held = threading.local()

    def __enter__(self) -> StudyLock:
        self.file_lock.acquire()
        if self.engine is not None:
            try:
                self._held.connection = advisory_lock(self.engine)
            except BaseException:
                self.file_lock.release()
                raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.engine is not None:
                advisory_unlock(self._held.connection)
        finally:
            self.file_lock.release()


def study_lock(study_dir: Path, storage: BaseStorage | None = None) -> StudyLock:
    """The study's lock; pass the storage from `open_storage` so that a PostgreSQL study is locked across
    machines."""
    study_dir.mkdir(parents=True, exist_ok=True)
    engine = getattr(storage, "engine", None)
    return StudyLock(FileLock(study_dir / LOCK_NAME), engine if engine is not None and engine.name == "postgresql"
                     else None)


def advisory_lock(engine):
    """A connection holding PostgreSQL's session-level advisory lock of cnnlab studies. One key for the whole
    database: it is held for milliseconds per trial start, and needs no study name."""
    import sqlalchemy  # Optuna's own dependency; only RDB storages need it

    connection = engine.connect()
    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    except BaseException:
        connection.invalidate()  # never hand a connection in an unknown lock state back to the pool
        connection.close()
        raise
    return connection


def advisory_unlock(connection) -> None:
    import sqlalchemy  # as in advisory_lock

    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
        connection.rollback()
    except Exception:
        connection.invalidate()  # closing the session releases the lock on the server
    finally:
        connection.close()

