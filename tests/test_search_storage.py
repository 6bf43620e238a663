"""The study storage of cnnlab-tune: workers share one study without duplicated or lost trials, a killed worker's
trial is recovered, and a bad storage URL is one clear error. Trials are a cheap function of their params."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from cnnlab.errors import ConfigError
from cnnlab.search.locks import study_lock
from cnnlab.search.recovery import recover_interrupted
from cnnlab.search.slots import FAIL_REASON, INTERRUPTED, RETRY_OF, WORKER_STARTED, trial_slot
from cnnlab.search.storage import open_storage
from conftest import cli_env

optuna.logging.set_verbosity(optuna.logging.WARNING)

# One worker as cnnlab-tune runs it: recover, then take trial slots until the budget is used.
# argv: study_dir storage_url|"" n_trials retry(0/1) sleep_s hang_on_trial(-1: none); the study is named after
# the study dir's parent (the test's tmp_path) so that tests sharing one PostgreSQL server have studies of their own.
WORKER = """
import sys, time
from pathlib import Path
import optuna
from cnnlab.search.locks import study_lock
from cnnlab.search.recovery import recover_interrupted
from cnnlab.search.slots import heartbeat, trial_slot
from cnnlab.search.storage import open_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study_dir, url, n_trials, retry, sleep_s, hang_on = sys.argv[1:]
storage = open_storage(url or None, Path(study_dir), heartbeat_s=1)
study = optuna.create_study(storage=storage, study_name=Path(study_dir).parent.name, load_if_exists=True)
lock = study_lock(Path(study_dir), storage)
recover_interrupted(study, retry == "1", lock)
while (trial := trial_slot(study, int(n_trials), lock)) is not None:
    with heartbeat(study, trial):
        x = trial.suggest_float("x", -10, 10)
        print("started", trial.number, flush=True)
        time.sleep(600 if trial.number == int(hang_on) else float(sleep_s))
    study.tell(trial, (x - 2) ** 2)
"""


def start_worker(study_dir, url, n_trials, *, retry=False, sleep_s=0.05, hang_on=-1) -> subprocess.Popen:
    args = [str(study_dir), url or "", str(n_trials), "1" if retry else "0", str(sleep_s), str(hang_on)]
    return subprocess.Popen([sys.executable, "-c", WORKER, *args], env=dict(cli_env(), OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(worker: subprocess.Popen) -> str:
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    return out


def load(study_dir, url) -> optuna.Study:
    return optuna.load_study(study_name=study_dir.parent.name, storage=open_storage(url, study_dir))


def check_two_workers_share(study_dir, url):
    workers = [start_worker(study_dir, url, 8) for _ in range(2)]
    for worker in workers:
        finish(worker)
    trials = load(study_dir, url).trials
    assert [t.number for t in trials] == list(range(8))
    assert all(t.state == TrialState.COMPLETE for t in trials)


def check_killed_worker_recovered(study_dir, url, retry: bool):
    worker = start_worker(study_dir, url, 3, hang_on=2)
    for line in worker.stdout:  # the third trial is running: kill its worker mid-trial
        if line.split() == ["started", "2"]:
            break
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    killed = load(study_dir, url).trials[2]
    assert killed.state == TrialState.RUNNING

    finish(start_worker(study_dir, url, 3, retry=retry))

    trials = load(study_dir, url).trials
    interrupted = trials[2]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs[INTERRUPTED] is True
    assert "interrupted (worker" in interrupted.user_attrs[FAIL_REASON]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.COMPLETE]
    rerun = trials[3]
    if retry:
        assert rerun.params == killed.params and rerun.user_attrs[RETRY_OF] == 2
    else:
        assert RETRY_OF not in rerun.user_attrs


def test_two_workers_share_the_journal_file(tmp_path):
    check_two_workers_share(tmp_path / "study", None)


@pytest.mark.parametrize("retry", [False, True], ids=["fail", "retry"])
def test_a_worker_killed_mid_trial_is_recovered_from_the_journal_file(tmp_path, retry):
    check_killed_worker_recovered(tmp_path / "study", None, retry)


def test_two_workers_share_postgresql(tmp_path, postgres_url):
    check_two_workers_share(tmp_path / "study", postgres_url)


def test_a_worker_killed_mid_trial_is_recovered_from_postgresql(tmp_path, postgres_url):
    check_killed_worker_recovered(tmp_path / "study", postgres_url, retry=True)


# --- in one process: the rules of the budget and of recovery --------------------------------------------------


@pytest.fixture
def journal_study(tmp_path):
    study = optuna.create_study(storage=open_storage(None, tmp_path), study_name="search")
    return study, study_lock(tmp_path)


def test_the_budget_counts_failures_but_not_interrupted_trials(journal_study):
    study, lock = journal_study
    study.tell(trial_slot(study, 3, lock), state=TrialState.FAIL)  # a trial that failed by itself: counted
    stopped = trial_slot(study, 3, lock)  # stopped on Ctrl-C: marked by the tune code, not counted
    stopped.set_user_attr(INTERRUPTED, True)
    study.tell(stopped, state=TrialState.FAIL)
    running = trial_slot(study, 3, lock)
    assert running is not None and trial_slot(study, 3, lock) is not None
    assert trial_slot(study, 3, lock) is None
    assert len(study.trials) == 4


def check_trial_slot_waits_for_the_lock_holder(study, lock, other_study, other_lock):
    slots = []
    with lock:  # a worker counts the trials and asks for one: nobody else may ask meanwhile
        waiting = threading.Thread(target=lambda: slots.append(trial_slot(other_study, 1, other_lock)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and study.trials == []
        study.ask()  # as the holder's own trial_slot does: it takes the last slot
    waiting.join(10)
    assert slots == [None] and len(study.trials) == 1


def test_a_trial_slot_waits_for_the_worker_holding_the_study(tmp_path, journal_study):
    other_worker = optuna.load_study(study_name="search", storage=open_storage(None, tmp_path))
    check_trial_slot_waits_for_the_lock_holder(*journal_study, other_worker, study_lock(tmp_path))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test's own study.ask()
def test_workers_on_two_machines_wait_for_each_other_on_postgresql(tmp_path, postgres_url):
    # two machines: one database, a study dir (and its flock) of their own
    storages = [open_storage(postgres_url, tmp_path / machine) for machine in ("a", "b")]
    study = optuna.create_study(storage=storages[0], study_name=tmp_path.name)
    other = optuna.load_study(storage=storages[1], study_name=tmp_path.name)
    check_trial_slot_waits_for_the_lock_holder(study, study_lock(tmp_path / "a", storages[0]),
                                               other, study_lock(tmp_path / "b", storages[1]))


def test_a_reused_pid_is_not_the_worker_and_a_live_worker_is_left_alone(journal_study):
    study, lock = journal_study
    alive = trial_slot(study, 5, lock)
    assert recover_interrupted(study, False, lock) == []
    reused = trial_slot(study, 5, lock)  # same pid, but another process started with it
    study._storage.set_trial_user_attr(reused._trial_id, WORKER_STARTED, "another boot:123")
    assert recover_interrupted(study, False, lock) == [reused.number]
    assert study.trials[alive.number].state == TrialState.RUNNING
    assert study.trials[reused.number].state == TrialState.FAIL


def test_an_interrupted_trial_is_retried_once(journal_study):
    study, lock = journal_study
    trial = trial_slot(study, 5, lock)
    trial.suggest_float("x", -10, 10)
    trial.set_user_attr(INTERRUPTED, True)
    study.tell(trial, state=TrialState.FAIL)
    assert recover_interrupted(study, True, lock) == [trial.number]
    assert recover_interrupted(study, True, lock) == []
    retry = trial_slot(study, 5, lock)
    assert retry.suggest_float("x", -10, 10) == study.trials[trial.number].params["x"]
    assert retry.user_attrs[RETRY_OF] == trial.number
    assert len(study.trials) == 2


# --- bad storage URLs ----------------------------------------------------------------------------------------


def test_an_unreachable_server_is_one_error_without_the_password(tmp_path):
    start = time.monotonic()
    with pytest.raises(ConfigError, match="search.storage") as error:
        open_storage("postgresql://u:secret@127.0.0.1:1/db", tmp_path)
    assert time.monotonic() - start < 20  # the connect timeout, not the OS's minutes
    assert "search.storage" in str(error.value) and "secret" not in str(error.value)
    assert "127.0.0.1" in str(error.value)


@pytest.mark.parametrize("url", ["not a url", "postgresql://u:p@host:port/db", "redis://localhost"])
def test_a_malformed_or_unsupported_url_is_one_error(tmp_path, url):
    with pytest.raises(ConfigError, match="search.storage"):
        open_storage(url, tmp_path)


def test_a_missing_driver_says_what_to_install(tmp_path):
    with pytest.raises(ConfigError, match="pg8000.* not installed"):
        open_storage("postgresql+pg8000://u:secret@127.0.0.1/db", tmp_path)


def test_a_wrong_password_is_one_error_without_the_password(tmp_path, postgres_url):
    wrong = postgres_url.replace(":cnnlab-test@", ":not-the-password@")
    with pytest.raises(ConfigError, match="search.storage") as error:
        open_storage(wrong, tmp_path)
    assert "not-the-password" not in str(error.value)
