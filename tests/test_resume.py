"""A killed run, resumed, ends exactly where the uninterrupted run ends (CPU)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import cli_env

from cnnlab.engine.progress import Progress
from cnnlab.run.lifecycle import train
from cnnlab.config.typed import data_section

# The bundled digits: small val and test splits to evaluate after each epoch and at the end.
COMMON = ["data=digits", "trainer.max_epochs=4", "trainer.limit_train_batches=12", "scheduler=step",
          "scheduler.step_size=1", "scheduler.gamma=0.7", "logger.histogram_every_n_epochs=0"]


def test_interrupted_then_resumed_equals_uninterrupted(make_cfg, monkeypatch, tmp_path):
    full = train(make_cfg(*COMMON, run="full"), overrides=[])

    real_end_epoch = Progress.end_epoch

    def die_after_epoch_2(self, epoch, *args):
        real_end_epoch(self, epoch, *args)
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill after epoch 2")

    monkeypatch.setattr(Progress, "end_epoch", die_after_epoch_2)
    with pytest.raises(KeyboardInterrupt, match="simulated kill after epoch 2"):
        train(make_cfg(*COMMON, run="killed"), overrides=[])
    monkeypatch.setattr(Progress, "end_epoch", real_end_epoch)
    assert torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2

    # Resuming needs only the run dir: the saved config supplies everything else.
    overrides = [f"trainer.resume={tmp_path / 'killed'}"]
    resumed = train(make_cfg(*overrides, run="resumed"), overrides=overrides)
    for key in ("test/loss", "test/acc", "test/acc_top5", "val/acc_best", "best_epoch", "epochs_completed"):
        assert resumed[key] == full[key], key
    history_full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)["history"]
    history_resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["history"]
    assert [h["val/loss"] for h in history_full] == [h["val/loss"] for h in history_resumed]
    assert [h["lr"] for h in history_full] == [h["lr"] for h in history_resumed]


def test_resume_can_extend_a_finished_run(make_cfg, tmp_path):
    train(make_cfg(*COMMON, run="short"), overrides=[])
    overrides = [f"trainer.resume={tmp_path / 'short' / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=6"]
    longer = train(make_cfg(*overrides, run="longer"), overrides=overrides)
    assert longer["epochs_completed"] == 6


def test_a_run_without_a_scheduler_resumes(make_cfg, tmp_path):
    """scheduler=none saves `_target_: null`, which names no class and so needs no trust to resume."""
    short = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "scheduler=none"]
    train(make_cfg(*short, run="short"), overrides=[])
    overrides = [f"trainer.resume={tmp_path / 'short'}", "trainer.max_epochs=2"]
    assert train(make_cfg(*overrides, run="longer"), overrides=overrides)["epochs_completed"] == 2


@pytest.mark.slow  # SIGKILL to a CLI run mid-training
def test_sigkilled_cli_run_resumes_to_the_same_metrics(tmp_path, run_cli, make_cfg):
    """The real thing: SIGKILL a CLI run mid-training, resume it from its run dir, compare metrics.json with the
    uninterrupted run's (run in process: the same config gives the same run as the command line)."""
    args = ["trainer.max_epochs=6", "trainer.limit_train_batches=10", "trainer.progress=plain",
            "logger.histogram_every_n_epochs=0"]
    full_dir, killed_dir, resumed_dir = tmp_path / "full", tmp_path / "killed", tmp_path / "resumed"
    train(make_cfg(*args, run="full"), overrides=[])

    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.train", *args, f"hydra.run.dir={killed_dir}"],
                            cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    killed_at = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if last.is_file():
                epoch = torch.load(last, weights_only=True)["epoch"]
                if epoch >= 2:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = epoch
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=30)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed_dir / "metrics.json").exists()

    resumed = run_cli("train", f"trainer.resume={killed_dir}", f"hydra.run.dir={resumed_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    full_metrics = json.loads((full_dir / "metrics.json").read_text())
    resumed_metrics = json.loads((resumed_dir / "metrics.json").read_text())
    for key in ("test/loss", "test/acc", "val/acc_best", "best_epoch", "epochs_completed", "test/confusion_matrix"):
        assert resumed_metrics[key] == full_metrics[key], key


@pytest.mark.parametrize("loader,workers", [("tensor", 0), ("dataloader", 0), ("dataloader", 2)])
def test_a_loader_resumed_mid_epoch_yields_the_rest_of_that_epoch_unchanged(make_cfg, loader, workers):
    """The position a mid-epoch checkpoint stores is enough to reproduce the epoch's remaining batches exactly,
    augmentation and MixUp/CutMix draws included, on both loader paths."""
    from cnnlab.data import build_data
    from cnnlab.engine.seeding import set_rng_state, rng_state

    # The per-sample path augments image by image: digits 0 and 1 only (~800 images, 10 training batches).
    cfg = make_cfg("augment=strong", "augment/mix=mixup_cutmix", f"data.loader={loader}", "data.batch_size=64",
                   "data.class_subset=[0,1]", f"data.num_workers={workers}") if loader == "dataloader" else \
        make_cfg("augment=basic", "augment/mix=mixup_cutmix", "data.loader=tensor", "data.batch_size=256")

    def fresh():
        return build_data(data_section(cfg.data), 3, torch.device("cpu"), cfg.augment).train

    def run_epoch(train, stop_after=None):
        torch.manual_seed(11)
        train.set_epoch(2)
        batches = []
        for i, batch in enumerate(train):
            batches.append(batch)
            if stop_after is not None and i + 1 == stop_after:
                return batches, train.state_dict(), rng_state()
        return batches, None, None

    warm = fresh()
    run_epoch(warm)  # an epoch before: persistent workers must not carry state into the next epoch
    full, _, _ = run_epoch(warm)
    head, state, rng = run_epoch(fresh(), stop_after=5)
    resumed = fresh()
    resumed.resume(state, on_resumed=lambda: set_rng_state(rng))
    tail = list(resumed)
    assert len(head) + len(tail) == len(full) and state["batches"] == 5
    for (x, y), (fx, fy) in zip(head + tail, full):
        assert torch.equal(x, fx) and torch.equal(y, fy)
