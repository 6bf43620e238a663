"""Sweeps and distributed runs when something goes wrong: a sweep dir whose name is not UTF-8, a parallel sweep
whose worker is killed, a torchrun rank that dies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import cli_env
from procs import torchrun_worker_pids

TINY = ["model=lenet5", "data=digits", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.progress=none", "trainer.summary=none", "logger.histogram_every_n_epochs=0"]


def _run(args: list, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([os.fsencode(a) for a in args], cwd=cwd, env=dict(cli_env(), OMP_NUM_THREADS="1"),
                          capture_output=True, timeout=timeout)


@pytest.mark.parametrize("how", ["sweep_dir", "cwd"])
def test_a_sweep_dir_whose_name_is_not_utf8_is_one_escaped_error_line(tmp_path, how):
    """b'sweep\\xe9' (Latin-1, not UTF-8): TensorBoard and the run's records cannot name it; refused before
    anything is created, the name shown with \\xNN escapes as image folder names are."""
    base = os.fsencode(tmp_path)
    if how == "sweep_dir":
        cwd, target = tmp_path, base + b"/sweep\xe9"
        extra = [b"hydra.sweep.dir=" + target]
    else:  # a relative output root under a working directory whose name is not UTF-8
        target = base + b"/work\xe9"
        os.mkdir(target)
        cwd, extra = target, []
    done = _run([sys.executable, "-m", "cnnlab.train", "-m", "optimizer.lr=0.01,0.02", *TINY, *extra], cwd)
    out = (done.stdout + done.stderr).decode("utf-8")  # everything printed is UTF-8
    assert done.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "\\xe9" in errors[0] and "not UTF-8" in errors[0], out
    assert "Traceback" not in out
    if how == "sweep_dir":
        assert not os.path.exists(target)
    else:
        assert os.listdir(target) == []


DDP = ["data=digits", "data.input_size=[8,8]", "model=mlp", "model.batch_norm=false", "augment=none",
       "optimizer=sgd", "scheduler=none", "trainer.progress=none", "trainer.summary=none",
       "logger.histogram_every_n_epochs=0", "logger.enabled=false", "trainer.limit_train_batches=10",
       "data.batch_size=8", "trainer.max_epochs=100"]


@pytest.mark.slow  # two torchrun processes train until the first checkpoint (about 12 s on two cores)
def test_a_killed_torchrun_rank_leaves_the_other_with_one_line_and_the_checkpoint(tmp_path):
    import re
    import signal
    import time

    import torch

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "cnnlab.train", *DDP, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            env=dict(cli_env(), OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        last = run_dir / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 120
        while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        workers = torchrun_worker_pids(proc.pid)
        assert set(workers) == {0, 1} and last.exists(), proc.communicate(timeout=60)[0][-3000:]
        os.kill(workers[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out[-3000:]
    assert "a peer process of this distributed run died (rank 1 of 2" in errors[0]
    assert f"{last}" in errors[0] and "is kept" in errors[0], errors[0]
    assert not re.search(r'File ".*(cnnlab|hydra)', out), out[-3000:]  # no traceback from rank 0 (torchrun has its own)
    assert "Connection closed by peer" not in out and "gloo/transport" not in out
    assert torch.load(last, weights_only=True)["epoch"] >= 1  # whole and loadable


@pytest.mark.slow  # a parallel sweep of two jobs, each in its own process (about 20 s on two cores)
def test_a_killed_parallel_job_ends_alone_and_the_summary_says_it_died(tmp_path):
    import csv
    import json
    import signal
    import time

    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.train", "-m", "hydra/launcher=parallel",
                             "hydra.launcher.n_jobs=2", "trainer.max_epochs=2,200", *TINY[:2], *TINY[4:],
                             "trainer.limit_train_batches=5", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                            env=dict(cli_env(), OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        marker = sweep / "1" / ".cnnlab-run.json"
        deadline = time.monotonic() + 180
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate(timeout=60)
        assert not (sweep / "0" / "metrics.json").exists()  # the healthy job is still running
        os.kill(json.loads(marker.read_text())["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-2000:] + err[-3000:]
    assert json.loads((sweep / "0" / "metrics.json").read_text())["epochs_completed"] == 2  # it finished
    assert "error: job 1 (trainer.max_epochs=200 " in err, err[-3000:]
    assert "died: its worker process died (killed by SIGKILL)" in err, err[-3000:]
    with open(sweep / "summary.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows["0"]["status"] == "completed"
    assert rows["1"]["status"] == "failed" and "worker process died" in rows["1"]["error"]
    assert "Traceback" not in out + err
    assert not (sweep / "1" / "failure.json").exists()  # the dead job's dir was not the launcher's to write in
