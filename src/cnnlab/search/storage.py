"""Where a search's Optuna study lives, and how workers share it without repeating or losing trials.

A worker (one `cnnlab-tune` process) uses the study like this:

    storage = open_storage(url, study_dir)              # None: study_dir/study.journal; or an RDB URL
    study = optuna.create_study(storage=storage, study_name=..., load_if_exists=True, ...)
    lock = study_lock(study_dir, storage)
    recover_interrupted(study, retry, lock)             # trials of dead workers: FAIL (and re-enqueued if retry)
    while (trial := trial_slot(study, n_trials, lock)) is not None:
        with heartbeat(study, trial):                   # RDB only: proves this worker is alive
            value = ...                                 # the trial's training run
        study.tell(trial, value)

- The default storage is a journal file in the study dir. It is for ONE machine: its writers and the study
  lock use `fcntl.flock`, which the kernel releases when a holder dies, but which network file systems do not
  reliably provide. Workers on several machines share a study through an RDB URL (PostgreSQL, MySQL).
  A write cut short (a full disk, a killed writer) never costs a record or glues the next one onto it, and a
  damaged file is one ConfigError (`Journal`). Reading results (`open_for_reading`) creates nothing and connects
  only to the study dir's own storage or one the user named.
- `study_lock(study_dir, storage)` is a `fcntl.flock` on `study_dir/study.lock`, which serialises the workers
  of this machine, plus, on PostgreSQL, an advisory lock (`pg_advisory_lock`), which serialises the workers of
  all machines: it is held for the milliseconds of counting and asking, and the server drops it if its holder
  dies. On MySQL (and without the storage argument) several machines are best effort: two machines racing in
  `trial_slot` may start at most workers-1 trials beyond `n_trials`, and two machines recovering at the same
  moment may enqueue one interrupted trial twice.
- `trial_slot` counts the trials that use the budget (COMPLETE, PRUNED, RUNNING, and FAIL unless
  interrupted) and asks for a new one only below `n_trials`. `study.ask()` pops an enqueued (WAITING) trial
  first: that is how a retry runs. The new trial carries its worker (`mark_worker`) and, on an RDB, a first
  heartbeat, both written before the lock is released.
- An interrupted trial is a FAIL trial with user attrs `interrupted=True` and `fail_reason`. The tune code
  marks a trial it stops on Ctrl-C that way; `recover_interrupted` marks the RUNNING trials whose worker is
  gone: on this host by process id and start time (a reused pid is not the worker), on other hosts by the
  RDB heartbeat (no heartbeat for twice `heartbeat_s`). With `retry`, each interrupted trial is enqueued once
  more with its params and user attr `retry_of=<number>`; that enqueued trial is the record that the retry
  happened (finished trials cannot be changed in Optuna), and a trial is retried at most `max_retries` times
  along a chain of retries.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from cnnlab.errors import ConfigError, RunError
from cnnlab.util.masking import mask

KEY = "search.storage"
JOURNAL_NAME = "study.journal"
LOCK_NAME = "study.lock"
RDB_BACKENDS = ("sqlite", "postgresql", "mysql")
CONNECT_TIMEOUT_S = 5  # an unreachable server is reported in seconds, not after the OS's minutes-long default
MAX_RETRIES = 3
TABLE_CREATION_ATTEMPTS = 5
ADVISORY_LOCK_KEY = 0x636E6E6C6162  # 'cnnlab': the PostgreSQL advisory lock of trial slots

# User attrs on trials: who runs a trial, and why it failed.
WORKER_HOST, WORKER_PID, WORKER_STARTED = "worker_host", "worker_pid", "worker_started"
INTERRUPTED, FAIL_REASON, RETRY_OF = "interrupted", "fail_reason", "retry_of"

log = logging.getLogger(__name__)


# --- opening the storage -------------------------------------------------------------------------------------


def open_storage(url: str | None, study_dir: Path, *, heartbeat_s: int = 60) -> BaseStorage:
    """The study's storage: the journal file `study_dir/study.journal` when `url` is None, else the RDB at `url`
    (sqlite:///, postgresql://, mysql://) with a heartbeat every `heartbeat_s` seconds.

    An RDB is connected to here, so an unreachable server, a wrong password, a missing driver or a malformed
    URL is one ConfigError naming search.storage (password masked) before any trial runs."""
    if url is None:
        return open_journal(study_dir)
    return open_rdb(url, heartbeat_s=heartbeat_s)


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


def open_for_reading(url: str | None, study_dir: Path, *, named: bool = False) -> BaseStorage:
    """The storage of a finished or running study, for reading its results; nothing is created.

    url: what study.yaml records (named=False), or what the user named on the command line (named=True).
    A study dir's own storage is opened without asking: its journal file, or an SQLite file inside it (read
    only). Any other storage a study.yaml names (a database server, a file elsewhere) is not connected to:
    a ConfigError says to name it; one the user named is opened like cnnlab-tune opens it."""
    study_dir = Path(study_dir)
    if url is None:
        return open_journal(study_dir, read_only=True)
    import sqlalchemy  # Optuna's own dependency; only RDB storages need it

    shown = mask_password(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        parsed = None
    if parsed is not None and parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        inside = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if named or inside.is_relative_to(study_dir.resolve()):
            if not inside.is_file():
                raise ConfigError(f"storage {shown!r}: {inside} does not exist (or is not a file); nothing was "
                                  f"created")
            return open_rdb(f"sqlite:///file:{inside}?mode=ro&uri=true", heartbeat_s=60)
    if not named:
        raise NotNamed(f"the study's storage {shown!r} (in {study_dir / 'study.yaml'}) is not in the study dir: "
                          f"it is not connected to unless named; give it with --storage URL to read the study")
    return open_rdb(url, heartbeat_s=60)


class NotNamed(ConfigError):
    """A study's storage that is not read unless the user names it."""


def open_rdb(url: str, *, heartbeat_s: int) -> RDBStorage:
    import sqlalchemy  # Optuna's own dependency; only RDB storages need it

    shown = mask_password(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise ConfigError(f"{KEY}={shown!r} is not a database URL; use postgresql://user:password@host[:port]/"
                          "database, mysql+pymysql://..., sqlite:///path, or leave it unset for the study's "
                          "journal file") from None
    backend = parsed.get_backend_name()
    if backend not in RDB_BACKENDS:
        hint = " (write postgresql://)" if backend == "postgres" else ""
        raise ConfigError(f"{KEY}={shown!r}: '{backend}' is not a supported database{hint}; use one of "
                          f"{', '.join(RDB_BACKENDS)}, or leave it unset for the study's journal file")
    parsed = with_driver(parsed)
    engine_kwargs = {}
    if backend != "sqlite" and "connect_timeout" not in parsed.query:
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    for attempt in range(TABLE_CREATION_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(parsed.render_as_string(hide_password=False), engine_kwargs=engine_kwargs,
                                  heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s)
        except ImportError:
            raise ConfigError(f"{KEY}={shown!r}: {missing_driver(parsed)}") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as bad:
            # Workers starting together on a new database race to create Optuna's tables; the loser's
            # CREATE TABLE fails on a duplicate, and the next attempt finds the tables there.
            if attempt + 1 == TABLE_CREATION_ATTEMPTS:
                raise ConfigError(f"{KEY}={shown!r}: cannot use the database: {db_reason(bad, parsed)}") from None
            time.sleep(0.2 * (attempt + 1))
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as bad:
            raise ConfigError(f"{KEY}={shown!r}: cannot use the database: {db_reason(bad, parsed)}") from None


def db_reason(error: Exception, url) -> str:
    """The database driver's own first line (not SQLAlchemy's wrapping), the password masked should it appear."""
    reason = first_line(error.orig if getattr(error, "orig", None) is not None else error)
    return reason.replace(url.password, "***") if url.password else reason


def with_driver(url):
    """The URL with its driver named: postgresql:// means the postgres extra's psycopg2 (SQLAlchemy alone would
    pick psycopg 3 for it), the one place this is decided for every command that opens a study."""
    if url.drivername == "postgresql":
        return url.set(drivername=f"postgresql+{postgres_driver()}")
    return url


def postgres_driver() -> str:
    # SQLAlchemy 2.1 reads postgresql:// as psycopg (3); cnnlab's postgres extra installs psycopg2.
    return next((name for name in ("psycopg2", "psycopg") if importlib.util.find_spec(name)), "psycopg2")


def missing_driver(url) -> str:
    driver = url.get_driver_name()
    if url.get_backend_name() == "postgresql" and driver in ("psycopg2", "psycopg"):
        return 'the PostgreSQL driver is not installed: pip install "cnnlab[postgres]"'
    if url.get_backend_name() == "mysql" and driver == "mysqldb":
        return "the MySQL driver is not installed: pip install mysqlclient, or pymysql with mysql+pymysql://"
    return f"the database driver '{driver}' is not installed (pip install it, or choose another in the URL)"


def mask_password(url: str) -> str:
    """The URL as it may be shown: its password, if any, as ***."""
    return mask(url)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- locking -------------------------------------------------------------------------------------------------


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


# --- workers and their trials --------------------------------------------------------------------------------


def process_started(pid: int) -> str | None:
    """When process `pid` started, as '<boot id>:<clock ticks after boot>'; '' where /proc cannot tell (then only
    its existence is known); None when there is no such live process (a zombie is not alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:  # no /proc (macOS): the pid exists or not
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    fields = stat[stat.rindex(")") + 2:].split()  # the command name in parentheses may hold spaces
    state, start_ticks = fields[0], fields[19]
    return None if state in ("Z", "X") else f"{boot_id}:{start_ticks}"


def mark_worker(trial: optuna.Trial) -> None:
    """Record on the trial which process runs it: host name, pid and the process's start time."""
    trial.set_user_attr(WORKER_HOST, socket.gethostname())
    trial.set_user_attr(WORKER_PID, os.getpid())
    trial.set_user_attr(WORKER_STARTED, process_started(os.getpid()))


def worker_gone(trial: FrozenTrial) -> bool:
    """Whether the trial's worker ran on this host and is no longer running (or its pid now names another
    process). False for a worker on another host: that is for the heartbeat to tell."""
    attrs = trial.user_attrs
    if attrs.get(WORKER_HOST) != socket.gethostname() or WORKER_PID not in attrs:
        return False
    now = process_started(int(attrs[WORKER_PID]))
    if now is None:
        return True
    recorded = attrs.get(WORKER_STARTED)
    return bool(now and recorded) and now != recorded


def counted(trial: FrozenTrial) -> bool:
    """Whether the trial uses one of the study's n_trials: interrupted trials do not (they are repeated or
    replaced), enqueued ones not yet (they count once they run)."""
    if trial.state == TrialState.FAIL:
        return not trial.user_attrs.get(INTERRUPTED, False)
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def trial_slot(study: optuna.Study, n_trials: int, lock: StudyLock) -> optuna.Trial | None:
    """A new trial for this worker, or None when the study's n_trials trials are done or running.
    The trial is marked with its worker (and, on an RDB, has its first heartbeat) before the lock is released."""
    with lock:
        if sum(counted(t) for t in study.get_trials(deepcopy=False)) >= n_trials:
            return None
        with warnings.catch_warnings():  # the heartbeat is run by `heartbeat()`, not by study.optimize
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        if heartbeat_interval(study):
            study._storage.record_heartbeat(trial._trial_id)  # a trial without any heartbeat is never stale
        mark_worker(trial)
        return trial


def heartbeat_interval(study: optuna.Study) -> int | None:
    get = getattr(study._storage, "get_heartbeat_interval", None)
    return get() if get else None


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """While the block runs, record the trial's heartbeat every heartbeat_s seconds (RDB storages; nothing for
    the journal file, whose trials are recovered by process id). Optuna does this only inside study.optimize."""
    interval = heartbeat_interval(study)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                study._storage.record_heartbeat(trial._trial_id)
            except Exception as bad:  # a database hiccup must not end the trial; the next beat may succeed
                log.warning("could not record trial %d's heartbeat: %s", trial.number, first_line(bad))

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --- recovery ------------------------------------------------------------------------------------------------


def recover_interrupted(study: optuna.Study, retry: bool, lock: StudyLock, *,
                        max_retries: int = MAX_RETRIES) -> list[int]:
    """Fail the RUNNING trials whose worker is gone (user attrs interrupted=True, fail_reason) and, with `retry`,
    enqueue every interrupted trial not yet retried with its params. Returns the numbers of the trials failed
    or enqueued again by this call. Safe to call from several workers at once, and again."""
    with lock:
        handled = [t.number for t in fail_gone_workers(study)]
        if retry:
            handled += [t.number for t in enqueue_retries(study, max_retries)]
    return sorted(set(handled))


def fail_gone_workers(study: optuna.Study) -> list[FrozenTrial]:
    failed = []
    grace = 2 * (heartbeat_interval(study) or 0)
    stale_ids = set(stale_trial_ids(study)) if grace else set()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        worker = f"worker {attrs.get(WORKER_PID, '?')} on {attrs.get(WORKER_HOST, '?')}"
        if worker_gone(trial):
            reason = f"interrupted ({worker} is gone)"
        elif trial._trial_id in stale_ids:
            reason = f"interrupted ({worker} sent no heartbeat for {grace} s)"
        elif WORKER_PID not in attrs and unmarked_and_abandoned(trial, grace):
            reason = "interrupted (its worker stopped before recording itself)"
        else:
            continue
        if fail_interrupted(study, trial, reason):
            failed.append(trial)
            log.warning("trial %d was %s", trial.number, reason)
    if grace:
        with warnings.catch_warnings():  # marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # whatever the heartbeat knows and the checks above did not
    return failed


def stale_trial_ids(study: optuna.Study) -> list[int]:
    # The ids optuna.storages.fail_stale_trials would fail; read first so that they are marked interrupted.
    get = getattr(study._storage, "_get_stale_trial_ids", None)
    return get(study._study_id) if get else []


def unmarked_and_abandoned(trial: FrozenTrial, grace: int) -> bool:
    """A RUNNING trial with no worker recorded: its worker died inside trial_slot. On the journal file that is
    certain under the lock (every trial is started there); on an RDB another machine may be inside trial_slot
    right now, so the trial must also be older than the heartbeat's grace period."""
    if not grace:
        return True
    started = trial.datetime_start
    if started is None:
        return False
    return (datetime.now(started.tzinfo) - started).total_seconds() > grace


def fail_interrupted(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Mark a RUNNING trial interrupted, then FAIL it (attrs first: a finished trial cannot be changed).
    False when another worker finished it in the meantime."""
    # Optuna has no public way to write the attrs of a trial this process did not ask for.
    try:
        study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason)
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def enqueue_retries(study: optuna.Study, max_retries: int) -> list[FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    retry_of = {t.number: t.user_attrs[RETRY_OF] for t in trials if RETRY_OF in t.user_attrs}
    retried = set(retry_of.values())
    enqueued = []
    for trial in trials:
        if trial.state != TrialState.FAIL or not trial.user_attrs.get(INTERRUPTED) or trial.number in retried:
            continue
        if retry_depth(trial.number, retry_of) >= max_retries:
            log.warning("trial %d was interrupted %d times; not retried again", trial.number, max_retries + 1)
            continue
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})
        enqueued.append(trial)
    return enqueued


def retry_depth(number: int, retry_of: dict[int, int]) -> int:
    depth = 0
    while number in retry_of:
        number, depth = retry_of[number], depth + 1
    return depth
