"""Who owns a run directory: a refused job writes nothing into the run it was refused for, a dir of another kind
(a study, an eval) is never used as a run's, `paths.existing_run=clear` deletes only what a cnnlab run wrote,
a start-up stopped by a full disk leaves nothing in the way, and each lab lesson keeps its own results."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys

import pytest

from cnnlab.errors import ConfigError, RunError
from cnnlab.run.rundir import MARKER, claim, claim_study
from cnnlab.run.lifecycle import train

from conftest import cli_env

TINY = ["model=lenet5", "data=digits", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.progress=none", "trainer.summary=none", "logger.histogram_every_n_epochs=0"]


def _snapshot(folder):
    """Every file under folder, byte for byte (Hydra's own log files aside: Hydra appends to them itself)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".log"}


def _cli(module, *args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", f"cnnlab.cli.{module}", *args], cwd=cwd,
                          env=dict(cli_env(), OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=timeout)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- a refusal writes nothing into a dir it does not own --------------------------------------------------------

@pytest.mark.slow  # a few subprocess runs: over 8 s on 2 cores
def test_a_sweep_run_again_into_its_own_dir_leaves_the_completed_runs_as_they_were(tmp_path):
    sweep = tmp_path / "sweep"
    first = _cli("train", "-m", "optimizer.lr=0.01,0.02", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = {name: _snapshot(sweep / name) for name in ("0", "1")}
    again = _cli("train", "-m", "optimizer.lr=0.01,0.02", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    out = again.stdout + again.stderr
    assert again.returncode == 1, out[-3000:]
    assert "already holds another run" in out and "Traceback" not in out
    assert "2 job(s) did not run" in again.stderr
    for name, files in runs.items():
        assert not (sweep / name / "failure.json").exists()
        assert _snapshot(sweep / name) == files  # the completed run, byte for byte
    assert [r["status"] for r in _rows(sweep / "summary.csv")] == ["completed", "completed"]
    assert not list(sweep.glob(".cnnlab-job-*"))  # the notes were the summary's to read
    compared = _cli("compare", str(sweep), "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert [r["status"] for r in _rows(tmp_path / "cmp" / "compare.csv")] == ["completed", "completed"]


def test_jobs_sharing_one_subdir_leave_the_first_jobs_run_alone(tmp_path, run_cli):
    sweep = tmp_path / "sweep"
    done = run_cli("train", "-m", "optimizer.lr=0.01,0.02", *TINY, f"hydra.sweep.dir={sweep}",
                "hydra.sweep.subdir=same", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert not (sweep / "same" / "failure.json").exists()
    assert "optimizer.lr=0.01" in (sweep / "same" / ".hydra" / "overrides.yaml").read_text()
    assert [r["status"] for r in _rows(sweep / "summary.csv")] == ["completed"]
    assert "1 job(s) did not run" in done.stderr


def test_a_job_that_fails_before_its_claim_still_records_why_in_its_own_new_dir(tmp_path, run_cli):
    sweep = tmp_path / "sweep"
    done = run_cli("train", "-m", "trainer.max_epochs=1,0", *TINY[:1], *TINY[3:], "data=digits",
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 1
    failure = json.loads((sweep / "1" / "failure.json").read_text())
    assert "trainer.max_epochs=0" in failure["message"]
    assert json.loads((sweep / "1" / MARKER).read_text())["kind"] == "train"


def test_a_search_trial_refused_for_another_runs_dir_writes_nothing_there(tmp_path, make_cfg):
    from cnnlab.search.trial import Outcome, TrialSetup, run_trial, trial_config  # noqa: F401

    import optuna

    study_dir = tmp_path / "study"
    held = study_dir / "trials" / "0000"
    train(make_cfg(*TINY, run="study/trials/0000"), overrides=[])
    before = _snapshot(held)
    from conftest import compose_cfg

    setup = TrialSetup(study_dir, [], ["trainer.max_epochs=1"], "val/acc",
                       lambda overrides, run_dir: trial_config(compose_cfg(run_dir, *TINY, *overrides), run_dir),
                       lambda cfg, overrides, callbacks: train(cfg, overrides, callbacks))
    study = optuna.create_study(direction="maximize")
    outcome = run_trial(study.ask(), setup)
    assert outcome.state == optuna.trial.TrialState.FAIL and "already holds another run" in outcome.reason
    assert not (held / "failure.json").exists()
    assert _snapshot(held) == before


# --- kinds, and what clear may delete -----------------------------------------------------------------------------

def test_clear_on_a_dir_without_a_marker_deletes_nothing(tmp_path, make_cfg):
    mine = tmp_path / "run"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "best.ckpt").write_bytes(b"the user's own weights")
    (mine / ".hydra").mkdir()
    (mine / ".hydra" / "config.yaml").write_text("the user's own config\n")
    before = _snapshot(mine)
    with pytest.raises(ConfigError, match=f"no {MARKER}.*nothing there is deleted"):
        train(make_cfg(*TINY, "paths.existing_run=clear"), overrides=[])
    assert _snapshot(mine) == before


@pytest.mark.slow  # a study and runs in each other's dirs (3 s)
def test_a_study_dir_is_not_a_run_dir_and_a_run_dir_is_not_a_study_dir(tmp_path, make_cfg, run_cli):
    study_dir = tmp_path / "run"
    claim_study(study_dir)
    (study_dir / "study.yaml").write_text("study_name: s\n")
    before = _snapshot(study_dir)
    with pytest.raises(ConfigError, match="directory of a cnnlab-tune study"):
        train(make_cfg(*TINY, "paths.existing_run=clear"), overrides=[])
    assert _snapshot(study_dir) == before

    run_dir = tmp_path / "trained"
    train(make_cfg(*TINY, run="trained"), overrides=[])
    before = _snapshot(run_dir)
    done = run_cli("tune", "search=lenet_lr_wd_bs", "search.n_trials=1", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "directory of a cnnlab-train run" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert _snapshot(run_dir) == before


def test_a_run_of_another_kind_is_refused_even_with_clear(tmp_path):
    run_dir = tmp_path / "run"
    claim(run_dir, "eval")
    (run_dir / "eval_metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="directory of a cnnlab-eval run"):
        claim(run_dir, "train", existing="clear")
    assert (run_dir / "eval_metrics.json").read_text() == "{}"
    assert json.loads((run_dir / MARKER).read_text())["kind"] == "eval"


# --- a start-up stopped by a full disk ---------------------------------------------------------------------------

def test_an_empty_marker_left_by_a_failed_start_up_is_not_in_the_way(tmp_path, make_cfg):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / MARKER).write_text("")  # what a marker write stopped by a full disk left
    metrics = train(make_cfg(*TINY), overrides=[])
    assert metrics["epochs_completed"] == 1
    assert json.loads((run_dir / MARKER).read_text())["pid"] == os.getpid()


def test_a_full_disk_while_writing_the_marker_leaves_no_marker(tmp_path, make_cfg, monkeypatch):
    import cnnlab.run.rundir as rundir

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "write", full)
    with pytest.raises(RunError, match="the disk is full.*Nothing was trained.*run the same command again"):
        train(make_cfg(*TINY), overrides=[])
    monkeypatch.undo()
    assert not (tmp_path / "run" / MARKER).exists()
    assert not list((tmp_path / "run").glob(".cnnlab-run.json*"))
    assert train(make_cfg(*TINY), overrides=[])["epochs_completed"] == 1


# --- each lab lesson owns its results; running it again goes on where it stopped ---------------------------------

def _lab(*args):
    from cnnlab.cli.lab import main

    main(list(args))


@pytest.mark.slow  # two lessons' smoke runs (4 s)
def test_two_lessons_sharing_an_out_keep_their_own_runs_and_pages(tmp_path):
    out = tmp_path / "out"
    _lab("losses", "--quick", "--out", str(out), "trainer.max_epochs=2")
    mine = out / "losses-quick"
    before = _snapshot(mine / "runs")
    page = (mine / "losses.md").read_text()
    _lab("lenet", "--quick", "--out", str(out))
    assert _snapshot(mine / "runs") == before  # the first lesson's arms, byte for byte
    assert (out / "lenet-quick" / "lenet.md").is_file()
    _lab("losses", "--quick", "--out", str(out), "--page-only")
    again = (mine / "losses.md").read_text()
    assert "trainer.max_epochs=2" in again and again == page  # its own numbers and overrides

    other = json.loads((out / "lenet-quick" / "lab.json").read_text())
    (mine / "lab.json").write_text(json.dumps(other))  # a folder whose record is another lesson's
    with pytest.raises(SystemExit, match="^2$") as stop:
        _lab("losses", "--quick", "--out", str(out), "--page-only")
    assert stop.value.code == 2
    assert (mine / "losses.md").read_text() == page


def test_an_interrupted_lesson_run_again_keeps_finished_arms_and_resumes_the_interrupted_one(tmp_path, monkeypatch,
                                                                                           caplog):
    import signal

    import cnnlab.run.lifecycle as training
    from cnnlab.engine.callbacks import Callback

    class TermAt(Callback):
        def on_train_batch_end(self, trainer, batch, outputs, step):
            if step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    real_train = training.train

    def train_stopping_mse(cfg, overrides=None, callbacks=()):
        if cfg.trainer.loss == "mse" and not cfg.trainer.get("resume"):
            callbacks = (*callbacks, TermAt())
        return real_train(cfg, overrides, callbacks)

    out = tmp_path / "out"
    monkeypatch.setattr(training, "train", train_stopping_mse)
    with pytest.raises(SystemExit, match=f"^{128 + signal.SIGTERM}$") as stop:
        _lab("losses", "--quick", "--out", str(out), "trainer.limit_train_batches=4")
    assert stop.value.code == 128 + signal.SIGTERM
    said = caplog.text
    assert "Arm mse, seed 0 was interrupted: run the same cnnlab-lab command" in said
    assert "cnnlab-train trainer.resume" not in said
    runs = out / "losses-quick" / "runs"
    finished = _snapshot(runs / "cross_entropy" / "seed0")
    assert not (runs / "mse" / "seed0" / "metrics.json").exists()

    monkeypatch.setattr(training, "train", real_train)
    import logging

    lines = []
    said_by_lab = logging.Handler()
    said_by_lab.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("cnnlab.lab").addHandler(said_by_lab)
    try:
        _lab("losses", "--quick", "--out", str(out), "trainer.limit_train_batches=4")
    finally:
        logging.getLogger("cnnlab.lab").removeHandler(said_by_lab)
    assert _snapshot(runs / "cross_entropy" / "seed0") == finished  # kept, not trained again
    metrics = json.loads((runs / "mse" / "seed0" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1
    said = "\n".join(lines)
    assert "mse/seed0: interrupted earlier, continues from its checkpoint" in said
    assert "cross_entropy/seed0: finished earlier with the same overrides, kept" in said
    assert (runs / "bce" / "seed0" / "metrics.json").is_file()


# --- the output root on a full disk: one error line, nothing lost ------------------------------------------------

# Runs a cnnlab command where the file system under ROOT is full: a new directory or any byte written there fails
# with ENOSPC (an empty file can still be created, as on a real full disk).
FULL_DISK = r'''
import builtins, errno, io, os, runpy, sys
root = os.path.realpath(sys.argv[1]); module = sys.argv[2]; sys.argv = [module] + sys.argv[3:]

def under(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return p == root or p.startswith(root + os.sep)

def full(path=None):
    raise OSError(errno.ENOSPC, "No space left on device", path)

class Full:
    def __init__(self, f, path):
        self._f, self._path = f, path
    def write(self, data):
        full(self._path)
    def writelines(self, lines):
        full(self._path)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self._f.close()
    def __getattr__(self, name):
        return getattr(self._f, name)

real_open, real_os_write, real_mkdir = builtins.open, os.write, os.mkdir

def fopen(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and under(file):
        return Full(f, os.fsdecode(file))
    return f

def fails_under_root(real):
    """`real` (os.write, os.fsync, ...) on a file descriptor, failing with ENOSPC for a file under the root."""
    def call(fd, *args):
        try:
            if under(os.readlink(f"/proc/self/fd/{fd}")):
                full()
        except OSError as bad:
            if bad.errno == errno.ENOSPC:
                raise
        return real(fd, *args)
    return call

os_write = fails_under_root(real_os_write)

def mkdir(path, *args, **kwargs):
    if under(path) and not os.path.isdir(path):
        full(os.fsdecode(path))
    return real_mkdir(path, *args, **kwargs)

builtins.open = io.open = fopen
os.write, os.mkdir = os_write, mkdir
runpy.run_module(module, run_name="__main__", alter_sys=True)
'''


@pytest.fixture(scope="module")
def a_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    from conftest import compose_cfg

    train(compose_cfg(run_dir, *TINY), overrides=[])
    return run_dir


@pytest.mark.parametrize("command", ["train", "eval", "doctor", "lab"])
def test_a_full_output_root_is_one_error_line_and_nothing_is_lost(tmp_path, command, a_checkpoint):
    root = tmp_path / "outputs"
    (root / "earlier").mkdir(parents=True)
    (root / "earlier" / "notes.txt").write_text("kept")
    args = {"train": ["cnnlab.cli.train", *TINY],
            "eval": ["cnnlab.cli.evaluate", f"ckpt={a_checkpoint}", "trainer.progress=none"],
            "doctor": ["cnnlab.cli.doctor", *TINY],
            "lab": ["cnnlab.lab", "losses", "--quick", "--out", "outputs"]}[command]
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(root), *args], cwd=tmp_path,
                          env=dict(cli_env(), OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the disk is full" in errors[0] and "outputs" in errors[0], out
    assert "Traceback" not in out
    assert [p.relative_to(root).as_posix() for p in sorted(root.rglob("*"))] == ["earlier", "earlier/notes.txt"]
    assert (root / "earlier" / "notes.txt").read_text() == "kept"


def test_a_full_disk_while_writing_the_hydra_record_leaves_nothing_in_the_way(tmp_path, make_cfg, monkeypatch):
    import cnnlab.run.rundir as rundir

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / ".hydra" / "config.yaml"))

    monkeypatch.setattr(rundir.OmegaConf, "save", full)
    with pytest.raises(RunError, match=r"could not write .*\.hydra/config\.yaml: the disk is full"):
        train(make_cfg(*TINY), overrides=["seed=1"])
    monkeypatch.undo()
    assert not (tmp_path / "run" / MARKER).exists() and not (tmp_path / "run" / ".hydra").exists()
    assert train(make_cfg(*TINY), overrides=[])["epochs_completed"] == 1


def test_a_command_stopped_by_a_full_disk_says_so_in_one_line(caplog):
    from cnnlab.cli.common import reports_config_errors

    @reports_config_errors
    def writes():
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/report.json")

    with pytest.raises(SystemExit, match="^1$") as stop:
        writes()
    assert stop.value.code == 1
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "error: could not write /somewhere/report.json: the disk is full"]
