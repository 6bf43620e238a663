"""Run dirs: unique per process without the user doing anything, claimed before anything is written, never
shared with another run's files; what a resume may reuse, and what paths.existing_run=clear deletes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cnnlab.errors import ConfigError
from cnnlab.run.rundir import MARKER, claim
from cnnlab.run.lifecycle import train

from conftest import cli_env

QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.progress=none", "trainer.summary=none",
         "logger.histogram_every_n_epochs=0"]


def _cli(args, cwd, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "cnnlab.train", *args], cwd=cwd, env=dict(cli_env(), OMP_NUM_THREADS="1"),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


@pytest.mark.slow  # two real training processes started at once (5.5 s)
def test_two_runs_started_together_get_their_own_run_dirs(tmp_path):
    procs = [_cli([*QUICK, f"optimizer.lr={lr}"], tmp_path) for lr in (0.001, 0.002)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    run_dirs = sorted(p.parent for p in tmp_path.glob("outputs/*/*/metrics.json"))
    assert len(run_dirs) == 2, outputs
    lrs = set()
    for run_dir in run_dirs:
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
        resolved = (run_dir / "config_resolved.yaml").read_text()
        lr = "0.001" if "optimizer.lr=0.001" in overrides else "0.002"
        assert f"lr: {lr}" in resolved  # the run's own overrides and resolved config, never the other's
        assert json.loads((run_dir / MARKER).read_text())["pid"] > 0
        assert len(list((run_dir / "checkpoints").glob("*.ckpt"))) == 2
        lrs.add(lr)
    assert lrs == {"0.001", "0.002"}


def test_a_reused_run_dir_holding_another_run_is_refused_and_kept_intact(tmp_path, run_cli):
    run_dir = tmp_path / "shared"
    first = run_cli("train", *QUICK, "model=mlp", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "train.log"}
    second = run_cli("train", *QUICK, "model=lenet5", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    out = second.stdout + second.stderr
    assert second.returncode == 2, out
    assert f"error: {run_dir} already holds another run (checkpoints/best.ckpt" in out and "Traceback" not in out
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "train.log"}
    assert after == before  # the mlp run's checkpoints, metrics and .hydra record are untouched
    assert "model=mlp" in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_existing_run_clear_deletes_only_that_runs_files(tmp_path, make_cfg):
    train(make_cfg(*QUICK, "model=mlp", run="dir"), overrides=[])
    own = tmp_path / "dir" / "notes.txt"
    own.write_text("the user's own file")
    # what other commands add to a run dir: why it did not finish, its Projector data, its explain pictures
    earlier = [tmp_path / "dir" / name for name in ("failure.json", "projector_config.pbtxt", "00003/x.tsv",
                                                    "explain/filters.png")]
    for path in earlier:
        path.parent.mkdir(exist_ok=True)
        path.write_text("of the mlp run")
    with pytest.raises(ConfigError, match="already holds another run"):
        train(make_cfg(*QUICK, run="dir"), overrides=[])
    metrics = train(make_cfg(*QUICK, "paths.existing_run=clear", run="dir"), overrides=[])
    assert metrics["params"] > 0
    import torch

    ckpt = torch.load(tmp_path / "dir" / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["config"]["model"]["name"] == "lenet5"
    assert own.read_text() == "the user's own file"
    assert not any(path.exists() for path in earlier)
    assert len(list((tmp_path / "dir").glob("events.out.tfevents.*"))) == 1  # the mlp run's event file is gone


def test_the_run_being_resumed_may_continue_in_its_own_dir(tmp_path, make_cfg):
    train(make_cfg(*QUICK, "scheduler=step", run="dir"), overrides=[])
    overrides = [f"trainer.resume={tmp_path / 'dir'}", "trainer.max_epochs=2"]
    metrics = train(make_cfg(*overrides, "scheduler=step", run="dir"), overrides=overrides)
    assert metrics["epochs_completed"] == 2


def test_a_run_that_stopped_before_any_result_leaves_nothing_in_the_way(tmp_path, make_cfg):
    run_dir = tmp_path / "dir"
    run_dir.mkdir()
    (run_dir / MARKER).write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": os.uname().nodename}))
    (run_dir / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    (run_dir / "environment.json").write_text("{}")
    train(make_cfg(*QUICK, run="dir"), overrides=[])
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert "events.out.tfevents.1.host.1.0" not in os.listdir(run_dir)


def test_a_dir_in_use_by_a_live_process_is_refused(tmp_path):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / MARKER).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename,
                                                  "started": "now"}))
        with pytest.raises(ConfigError, match=f"is in use by another cnnlab run \\(process {sleeper.pid}"):
            claim(run_dir, "train")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_of_two_claims_on_one_dir_exactly_one_wins(tmp_path):
    """The marker is created with O_EXCL: a second claim in the same instant is refused, not merged."""
    code = ("import sys; from cnnlab.run.rundir import claim; from cnnlab.errors import ConfigError\n"
            "try:\n    claim(__import__('pathlib').Path(sys.argv[1]), 'train'); print('won')\n"
            "except ConfigError as e:\n    print('lost:', e)\n")
    results = []
    for attempt in range(5):
        run_dir = tmp_path / f"race{attempt}"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(run_dir)], env=cli_env(), text=True,
                                  stdout=subprocess.PIPE) for _ in range(2)]
        outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
        results.append(outs)
        assert sum(o == "won" for o in outs) >= 1
        # either both ran one after the other (the second finds a dead owner's marker and takes over) or
        # they raced and exactly one lost with a clear message
        assert all(o == "won" or "claimed by another cnnlab process" in o or "in use by" in o for o in outs)
    assert results


@pytest.mark.parametrize("where", ["under_a_file", "a_file"])
def test_a_run_dir_that_cannot_be_created_is_one_error_line(tmp_path, where, run_cli):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file")
    run_dir = blocker / "run" if where == "under_a_file" else blocker
    proc = run_cli("train", *QUICK, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert out.startswith(f"error: hydra.run.dir={run_dir}: cannot create or write the run directory there")
    assert "Traceback" not in out and blocker.read_text() == "a regular file"


def test_a_run_dir_on_a_read_only_file_system_is_one_error_line(tmp_path):
    """A read-only bind mount in a private mount namespace (root writes through permission bits, not through a
    read-only file system)."""
    import shlex
    import shutil

    locked = tmp_path / "locked"
    locked.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {locked} {locked}"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here: {probe.stderr[-200:]!r}")
    train_cmd = shlex.join([sys.executable, "-m", "cnnlab.train", *QUICK, f"hydra.run.dir={locked / 'run'}"])
    script = f"mount --bind {locked} {locked} && mount -o remount,ro,bind {locked} {locked} && exec {train_cmd}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "cannot create or write the run directory there (Read-only file system)" in out and "Traceback" not in out


@pytest.mark.slow  # when the signal lands depends on timing
def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli([*QUICK, f"hydra.run.dir={run_dir}"], tmp_path)
    deadline = time.monotonic() + 60
    while not (run_dir / "train.log").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # Hydra has started the job; cnnlab is importing torch and building the run
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    # 130 from cnnlab's handler; CPython itself ends the process with SIGINT (-2 here) when the interrupt landed
    # in code it ran through its own C entry points during import: a shell reports 130 for both.
    assert proc.returncode in (130, -signal.SIGINT), out
    assert "Traceback" not in out and ("interrupted by Ctrl-C" in out or "stopped by SIGINT" in out)


def test_a_marker_from_another_machine_is_refused_unless_cleared(tmp_path):
    run_dir = tmp_path / "shared_fs"
    run_dir.mkdir()
    (run_dir / MARKER).write_text(json.dumps({"pid": 1, "host": "some-other-node", "started": "earlier"}))
    with pytest.raises(ConfigError, match="process 1 on some-other-node.*set paths.existing_run=clear"):
        claim(run_dir, "train")
    claim(run_dir, "train", existing="clear")
    assert json.loads((run_dir / MARKER).read_text())["host"] == os.uname().nodename
