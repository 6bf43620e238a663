"""Faults of a search's study storage as users meet them: a journal cut short by a full disk or damaged, a
study continued with other training, a database password on the command line, a study dir naming a storage
elsewhere, a bad study name, a killed worker, torchrun, and more workers than the machine has CPUs."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from commands import run_in_process
from conftest import cli_env
from optuna.trial import TrialState

from cnnlab.config.compose import compose_config
from cnnlab.errors import ConfigError, RunError
from cnnlab.search import journal as journals
from cnnlab.search.database import with_driver
from cnnlab.search.storage import open_storage
from cnnlab.search.plan import plan_search

optuna.logging.set_verbosity(optuna.logging.WARNING)

# One searched parameter (lr): the checks before the first trial compose a trial config per end of each range.
TINY = ["~search.space.weight_decay", "~search.space.batch_size", "data=digits", "trainer.limit_train_batches=2", "logger.histogram_every_n_epochs=0", "logger.images=false",
        "logger.graph=false", "trainer.max_epochs=1", "search.pruner.name=none", "search.sampler.name=random"]


def command(module: str, *args: str, cwd: Path, timeout: int = 240, env: dict | None = None):
    """The command run in this process (tests/commands.py), with `env` added to the environment while it runs."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        return run_in_process(module, *args, cwd=cwd, timeout=timeout)


def tune(root: Path, *args: str, **kwargs):
    return command("tune", *TINY, f"paths.output_root={root}", *args, cwd=root, **kwargs)


def said(done) -> str:
    return done.stdout + done.stderr


def one_error(done, status: int = 2) -> str:
    """The command's output, checked to be one `error:` line (exit `status`) and no traceback."""
    out = said(done)
    assert done.returncode == status, out
    assert out.count("error:") == 1 and "Traceback" not in out, out
    return out


def snapshot(folder: Path) -> dict:
    """Every file's bytes (but the log a refusal adds its line to)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))
            if p.name != "tune.log"}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> Path:
    """A study dir of 2 finished trials (journal storage), made once; tests work on copies."""
    root = tmp_path_factory.mktemp("made")
    done = tune(root, "search.study_name=s", "search.n_trials=2")
    assert done.returncode == 0, said(done)
    return root / "search" / "s"


@pytest.fixture
def study(finished_study, tmp_path) -> Path:
    copy = tmp_path / "search" / "s"
    shutil.copytree(finished_study, copy)
    yield copy


def trials_of(study_dir: Path) -> list:
    return optuna.load_study(study_name="s", storage=open_storage(None, study_dir)).trials


# --- a journal cut short or damaged ---------------------------------------------------------------------------


@pytest.mark.slow  # a few subprocess runs: over 8 s on 2 cores
def test_a_journal_cut_short_by_a_full_disk_is_read_up_to_its_last_record_by_tune_and_compare(study, tmp_path):
    journal = study / "study.journal"
    whole = journal.read_bytes()
    torn = whole + b'{"op_code":5,"worker_id":"x","trial_id":1,"us'  # the write the full disk cut short
    journal.write_bytes(torn)
    shown = command("compare", str(study), "--out", str(tmp_path / "cmp"), "--no-plots", cwd=tmp_path)
    assert shown.returncode == 0 and "0000" in shown.stdout and "0001" in shown.stdout, said(shown)
    assert journal.read_bytes() == torn  # reading changes nothing

    done = tune(tmp_path, "search.study_name=s", "search.n_trials=3")
    assert done.returncode == 0, said(done)
    assert "its last record was cut short" in said(done)
    assert journal.read_bytes().startswith(whole) and journal.read_bytes().endswith(b"\n")
    trials = trials_of(study)
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
    again = command("compare", str(study), "--out", str(tmp_path / "cmp2"), cwd=tmp_path)
    assert again.returncode == 0 and "0002" in again.stdout, said(again)
    assert (tmp_path / "cmp2" / "optimization_history.png").is_file()
    # compare reads a journal left cut short up to its last record, saying so
    journal.write_bytes(journal.read_bytes() + b'{"op_code":5,"wor')
    shown = command("compare", str(study), "--out", str(tmp_path / "cmp3"), cwd=tmp_path)
    assert shown.returncode == 0 and "its last line is unfinished" in shown.stderr, said(shown)
    assert (tmp_path / "cmp3" / "optimization_history.png").is_file()


def test_a_journal_write_failing_on_a_full_disk_leaves_no_half_record(study, monkeypatch):
    journal = study / "study.journal"
    storage = open_storage(None, study)
    loaded = optuna.load_study(study_name="s", storage=storage)
    before = journal.read_bytes()
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))  # what fits, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journals.os, "write", full_disk)
    with pytest.raises(RunError, match=r"cannot write the study's journal .*No space left on device.*run the same "
                                       r"command again"):
        loaded.set_user_attr("note", "x" * 100)
    assert journal.read_bytes() == before
    monkeypatch.setattr(journals.os, "write", real_write)  # space freed
    loaded.set_user_attr("note", "y")
    assert optuna.load_study(study_name="s", storage=open_storage(None, study)).user_attrs["note"] == "y"


# cnnlab-tune with the disk filling up after a few journal writes (in the first trial)
FULL_DISK_TUNE = """
import errno, os, sys
real_write, calls = os.write, []
def fills_up(fd, data):  # the journal's 4th append fails (other files written with os.write are not counted)
    if os.readlink(f"/proc/self/fd/{fd}").endswith("study.journal"):
        calls.append(fd)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
    return real_write(fd, data)
os.write = fills_up
from cnnlab.cli.tune import main
sys.argv = ["cnnlab-tune", *sys.argv[1:]]
main()
"""


@pytest.mark.slow  # a few subprocess runs: over 8 s on 2 cores
def test_a_search_stopped_by_a_full_disk_is_one_line_and_continues_once_space_is_freed(tmp_path):
    args = [*TINY, f"paths.output_root={tmp_path}", "search.study_name=s", "search.n_trials=2"]
    full = subprocess.run([sys.executable, "-c", FULL_DISK_TUNE, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=240, env=dict(cli_env(), OMP_NUM_THREADS="1"))
    out = one_error(full, status=1)
    assert "cannot write the study's journal" in out and "No space left on device" in out
    assert "run the same command again to continue the study" in out
    journal = tmp_path / "search" / "s" / "study.journal"
    assert journal.read_bytes().endswith(b"\n")
    done = tune(tmp_path, "search.study_name=s", "search.n_trials=2")
    assert done.returncode == 0, said(done)
    trials = trials_of(tmp_path / "search" / "s")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["interrupted"]


@pytest.mark.parametrize("empty", ["emptied", "deleted"])
def test_a_lost_journal_next_to_finished_trials_is_refused_not_replaced(study, tmp_path, empty):
    journal = study / "study.journal"
    if empty == "emptied":
        journal.write_bytes(b"")
    else:
        journal.unlink()
    kept = snapshot(study)
    out = one_error(tune(tmp_path, "search.study_name=s", "search.n_trials=3"))
    assert "trials holds 2 trial run dir(s) (0000, 0001)" in out and "Restore it from a backup" in out, out
    assert "another search.study_name" in out
    assert snapshot(study) == kept


CORRUPTIONS = {
    "garbage line": lambda lines: [*lines[:2], b"this is not json\n", *lines[3:]],
    "cut line": lambda lines: [*lines[:2], lines[2][: len(lines[2]) // 2] + b"\n", *lines[3:]],
    "binary line": lambda lines: [*lines[:2], b"\x00\xff\xfe\x9c" * 10 + b"\n", *lines[3:]],
}


@pytest.mark.parametrize("damage", [*CORRUPTIONS, "directory"])
def test_a_damaged_journal_is_one_error_in_tune_and_compare(study, tmp_path, damage):
    journal = study / "study.journal"
    if damage == "directory":
        journal.unlink()
        journal.mkdir()
    else:
        journal.write_bytes(b"".join(CORRUPTIONS[damage](journal.read_bytes().splitlines(keepends=True))))
    kept = snapshot(study)
    out = one_error(tune(tmp_path, "search.study_name=s", "search.n_trials=3"))
    assert str(journal) in out
    out = one_error(command("compare", str(study), "--out", str(tmp_path / "cmp"), cwd=tmp_path))
    assert str(journal) in out
    assert snapshot(study) == kept


# --- a continued study trains as its trials did ---------------------------------------------------------------


@pytest.mark.slow  # a few subprocess runs: over 8 s on 2 cores
def test_continuing_a_study_with_other_training_overrides_is_refused(tmp_path):
    study_dir = tmp_path / "study"
    first = [*TINY, "search.n_trials=1"]
    plan_search(compose_config(first, study_dir, config_name="tune"), first)
    changed = [*TINY[:-3], "trainer.max_epochs=2", *TINY[-2:], "search.n_trials=1"]
    with pytest.raises(ConfigError, match=r"this study's trials were trained with other overrides "
                                          r"\(trainer\.max_epochs=1 then, trainer\.max_epochs=2 now\)") as refused:
        plan_search(compose_config(changed, study_dir, config_name="tune"), changed)
    assert "choose another search.study_name to start a new study" in str(refused.value)
    added = [*first, "optimizer=adam"]
    with pytest.raises(ConfigError, match=r"optimizer=adam now, not then"):
        plan_search(compose_config(added, study_dir, config_name="tune"), added)
    # the same training, shown or logged differently, continues it
    same = [*first, "trainer.progress=none", "search.n_trials=2"]
    _, _, continued = plan_search(compose_config(same, study_dir, config_name="tune"), same)
    assert continued


# --- secrets --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_study(tmp_path_factory, postgres_url):
    root = tmp_path_factory.mktemp("pg")
    done = tune(root, "search.study_name=secretless", f"search.storage='{postgres_url}'", "search.n_trials=2")
    assert done.returncode == 0, said(done)
    return root, done


@pytest.mark.slow  # a few subprocess runs: over 8 s on 2 cores
def test_no_file_or_log_holds_the_database_password(postgres_study, postgres_url):
    root, done = postgres_study
    password = postgres_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert password not in said(done)
    files = [p for p in root.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"study.yaml", "tune.log", ".cnnlab-run.json", "environment.json", "overrides.yaml", "config.yaml",
            "config_resolved.yaml"} <= names, names
    assert any(p.name.startswith("events.out.tfevents") for p in files)
    holding = [str(p) for p in files if password.encode() in p.read_bytes()]
    assert not holding
    assert "postgres:***@" in (root / "search" / "secretless" / "study.yaml").read_text()


@pytest.mark.slow  # a few subprocess runs: over 8 s on 2 cores
def test_compare_reads_a_postgres_study_with_the_driver_tune_used(postgres_study, postgres_url, tmp_path):
    root, _ = postgres_study
    study_dir = root / "search" / "secretless"
    unnamed = command("compare", str(study_dir), "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert unnamed.returncode == 0, said(unnamed)
    assert "give it with --storage URL" in unnamed.stdout and "0001" in unnamed.stdout
    named = command("compare", str(study_dir), "--storage", postgres_url, "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert named.returncode == 0, said(named)
    assert (tmp_path / "b" / "optimization_history.png").is_file()
    password = postgres_url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert str(with_driver(__import__("sqlalchemy").engine.make_url(postgres_url)).drivername) == \
        "postgresql+psycopg2"


# --- reading results creates and connects to nothing it was not given ------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a few subprocess runs: over 8 s on 2 cores
def test_compare_never_creates_or_connects_to_a_storage_it_was_not_given(study, tmp_path):
    info = yaml.safe_load((study / "study.yaml").read_text())
    elsewhere = tmp_path / "elsewhere.db"
    with socket.socket() as server:  # a database server that would see a connection
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        for storage in (f"sqlite:///{elsewhere}", f"postgresql://u:pw@127.0.0.1:{port}/db"):
            (study / "study.yaml").write_text(yaml.safe_dump({**info, "storage": storage}))
            kept = snapshot(study)
            shown = command("compare", str(study), "--out", str(tmp_path / "cmp"), cwd=tmp_path)
            assert shown.returncode == 0, said(shown)
            assert "give it with --storage URL" in shown.stdout and "0000" in shown.stdout and "0001" in shown.stdout
            assert "pw" not in said(shown).replace("pw@", "")  # noqa: the password is never shown
            assert not elsewhere.exists()
            assert snapshot(study) == kept
            with pytest.raises(socket.timeout, match="timed out"):
                server.accept()
    # the journal a study dir names is read, never created
    (study / "study.yaml").write_text(yaml.safe_dump(info))
    (study / "study.journal").unlink()
    (study / "study.journal.lock").unlink()
    out = one_error(command("compare", str(study), "--out", str(tmp_path / "cmp"), cwd=tmp_path))
    assert "study.journal: no such file" in out
    assert not (study / "study.journal").exists() and not (study / "study.journal.lock").exists()


@pytest.mark.slow  # a few subprocess runs: over 8 s on 2 cores
def test_compare_reads_an_sqlite_study_inside_the_study_dir_without_changing_it(tmp_path):
    study_dir = tmp_path / "search" / "sq"
    database = study_dir / "optuna.db"
    study_dir.mkdir(parents=True)
    done = tune(tmp_path, "search.study_name=sq", f"search.storage=sqlite:///{database}", "search.n_trials=2")
    assert done.returncode == 0, said(done)
    kept = database.read_bytes()
    shown = command("compare", str(study_dir), "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert shown.returncode == 0, said(shown)
    assert (tmp_path / "cmp" / "optimization_history.png").is_file()
    assert database.read_bytes() == kept


# --- checks before the first write ----------------------------------------------------------------------------


def test_a_refused_study_name_writes_nothing(tmp_path):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    before = snapshot(tmp_path)
    out = one_error(command("tune", *TINY, "search.study_name=../../x", cwd=cwd))
    assert "search.study_name='../../x'" in out
    after = snapshot(tmp_path)
    assert {k for k in after if k not in before} <= {"a/b/outputs"}  # the output root, checked before Hydra
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("module", ["train", "doctor"])
def test_train_or_doctor_with_a_bad_value_leaves_no_run_dir(tmp_path, module):
    out = one_error(command(module, "data=digits", "trainer.max_epochs=-1", f"paths.output_root={tmp_path / 'out'}",
                            cwd=tmp_path))
    assert "trainer.max_epochs=-1" in out
    assert list((tmp_path / "out").rglob("*")) == []


def test_tune_under_torchrun_is_refused_at_once(tmp_path):
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "TORCHELASTIC_RUN_ID": "test"}
    out = one_error(tune(tmp_path, "search.study_name=dist", "search.n_trials=1", env=env, timeout=60))
    assert "does not run under torchrun" in out and "search.workers=N" in out
    assert not (tmp_path / "search").exists()


def test_more_workers_than_cpus_is_refused_before_anything_starts(tmp_path):
    out = one_error(tune(tmp_path, "search.study_name=many", "search.workers=100000"))
    assert f"search.workers=100000: at most {len(os.sched_getaffinity(0))} on this machine" in out
    assert not (tmp_path / "search").exists()


# --- a killed worker ------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.slow  # two worker processes, one of them killed mid-trial
def test_a_killed_worker_ends_the_command_in_one_line_saying_how_to_continue(tmp_path):
    cmd = [sys.executable, "-m", "cnnlab.cli.tune", *TINY, f"paths.output_root={tmp_path}", "search.study_name=k",
           "search.n_trials=4", "search.workers=2", "trainer.max_epochs=3", "trainer.limit_train_batches=30"]
    tune_process = subprocess.Popen(cmd, cwd=tmp_path, env=dict(cli_env(), OMP_NUM_THREADS="1"),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in tune_process.stdout:
        lines.append(line)
        if "[worker 2] trial" in line and "starting" in line:
            break
    workers = [p for p in children(tune_process.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
    assert workers, lines
    victim = workers[-1]
    os.kill(victim, signal.SIGKILL)
    rest, _ = tune_process.communicate(timeout=300)
    out = "".join(lines) + rest
    assert tune_process.returncode == 1, out
    assert out.count("error:") == 1 and "Traceback" not in out, out
    error = next(line for line in out.splitlines() if "error:" in line)
    assert f"(process {victim}) was killed by SIGKILL" in error and "1 of 2 workers finished normally" in error
    assert "run the same command again to continue the study" in error
    again = subprocess.run(cmd, cwd=tmp_path, env=dict(cli_env(), OMP_NUM_THREADS="1"), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, said(again)
    trials = optuna.load_study(study_name="k", storage=open_storage(None, tmp_path / "search" / "k")).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
