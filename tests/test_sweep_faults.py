"""Sweeps and distributed runs when something goes wrong: a sweep dir whose name is not UTF-8, a parallel sweep
whose worker is killed, a torchrun rank that dies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import cli_env

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
