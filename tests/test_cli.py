"""The console scripts as a user runs them: run-dir layout, console output, multirun."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def run_cli(run_cli_process):
    """The console scripts here run in processes of their own, as a user starts them."""
    return run_cli_process


def test_train_cli_writes_a_complete_run_dir(run_cli, tmp_path):
    done = run_cli("train", "trainer.max_epochs=2", "trainer.limit_train_batches=10", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1
    run = runs[0]
    assert run.parent.name.count("-") == 2 and run.name.count("-") == 2  # outputs/<date>/<time>
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
                 "metrics.json", "environment.json", "config_resolved.yaml", "train.log"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*"))
    # Not a terminal: plain progress lines, an end-of-epoch summary per epoch, and the same lines in the log file.
    assert "epoch 1/2" in done.stdout and "epoch 2/2" in done.stdout and "val/acc" in done.stdout
    assert "\r" not in done.stdout
    log_text = (run / "train.log").read_text()
    assert "epoch 2/2" in log_text and "test/acc" in log_text
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2 and 0 < metrics["test/acc"] <= 1


@pytest.mark.slow  # a real sweep process; test_experiments runs cnnlab-train -m in-process by default
def test_multirun_sweeps_into_the_multirun_dir(run_cli, tmp_path):
    done = run_cli("train", "-m", "optimizer=sgd,adam", "trainer.max_epochs=1", "trainer.limit_train_batches=5",
                   "logger=none", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/metrics.json"))
    assert [m.parent.name for m in metrics] == ["0", "1"]
    configs = [(m.parent / "config_resolved.yaml").read_text() for m in metrics]
    assert "torch.optim.SGD" in configs[0] and "torch.optim.Adam\n" in configs[1]
