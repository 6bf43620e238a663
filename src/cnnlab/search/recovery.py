"""Trials whose worker is gone: marked interrupted and failed, and with retry enqueued again with their params."""

from __future__ import annotations

import logging
import warnings
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.search.locks import StudyLock
from cnnlab.search.slots import (FAIL_REASON, INTERRUPTED, RETRY_OF, WORKER_HOST, WORKER_PID, heartbeat_interval,
                                 worker_gone)

MAX_RETRIES = 3

log = logging.getLogger("cnnlab.search.storage")  # the study storage's logger, as its messages were named


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
