"""Taking a trial slot of the study for this worker: the worker recorded on the trial, and the heartbeat that
proves it alive."""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.errors import first_line
from cnnlab.search.locks import StudyLock

# User attrs on trials: who runs a trial, and why it failed.
WORKER_HOST, WORKER_PID, WORKER_STARTED = "worker_host", "worker_pid", "worker_started"
INTERRUPTED, FAIL_REASON, RETRY_OF = "interrupted", "fail_reason", "retry_of"

log = logging.getLogger("cnnlab.search.storage")  # the study storage's logger, as its messages were named


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
