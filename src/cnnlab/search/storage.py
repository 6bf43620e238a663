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
import logging
import os
import re
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

from cnnlab.errors import ConfigError

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


def open_journal(study_dir: Path) -> JournalStorage:
    # A journal rather than SQLite: SQLite with several concurrent writers fails with 'database is locked'.
    # Appends take a flock (not Optuna's lock files, which a SIGKILLed writer leaves behind for a 30 s grace).
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / JOURNAL_NAME
    return JournalStorage(JournalFileBackend(str(path), lock_obj=FileLock(path.with_name(path.name + ".lock"))))


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
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=f"postgresql+{postgres_driver()}")
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
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


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
