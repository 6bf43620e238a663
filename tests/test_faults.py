"""Fault injection: each fault cnnlab promises to survive is injected into a real short run, and what survives is
checked (docs/reliability.md maps every row of its table to a test here)."""

from __future__ import annotations

import errno
import os
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.engine.checkpoint import config_hash, load_checkpoint
from cnnlab.errors import ConfigError, RunError
from cnnlab.engine.losses import Loss
from cnnlab.run.lifecycle import train

# Small and deterministic: 4 epochs of 40 batches of LeNet-5 on the bundled digits.
SHORT = ["trainer.max_epochs=4", "trainer.limit_train_batches=40", "data.batch_size=32",
         "logger.histogram_every_n_epochs=0"]
COMPARED = ("test/loss", "test/acc", "val/acc_best", "best_epoch", "epochs_completed", "test/confusion_matrix")


def _cli(args, cwd, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "cnnlab.train", *args], cwd=cwd, text=True, **kwargs)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same short run, never interrupted (in process: the same config gives the same run as
    the command line, whose interrupted and resumed runs are compared with it)."""
    from conftest import compose_cfg

    out = tmp_path_factory.mktemp("faults") / "full"
    train(compose_cfg(out, *SHORT, "trainer.progress=none"), overrides=[])
    return _metrics(out)


def _signal_mid_epoch(run_dir: Path, cwd: Path, signals: list[int], epoch: int = 2):
    """Start a run, send `signals` once it prints a step line of `epoch`; return (returncode, output)."""
    proc = _cli([*SHORT, "trainer.progress=plain", "trainer.log_every_n_steps=5", f"hydra.run.dir={run_dir}"], cwd,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    deadline = time.monotonic() + 240
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(f"epoch {epoch}/4  step 5/"):
                for sig in signals:
                    proc.send_signal(sig)
                break
            if time.monotonic() > deadline:
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines) + (rest or "")


# SIGTERM (slow): two commands, the stopped one and its resume on the command line; SIGINT resumes in process.
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGINT])
def test_signal_stops_after_the_step_and_resume_continues_mid_epoch(tmp_path, uninterrupted, sig, make_cfg, caplog):
    stopped = tmp_path / "stopped"
    code, output = _signal_mid_epoch(stopped, tmp_path, [sig])
    name = signal.Signals(sig).name
    assert code == 128 + sig, output[-3000:]
    assert f"stopped by {name} at epoch 2, step" in output and "cnnlab-train trainer.resume=" in output
    ckpt = load_checkpoint(stopped / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 1 and ckpt["partial"]["epoch"] == 2 and 5 <= ckpt["partial"]["loader"]["batches"] < 40
    # the event file was closed properly: it holds epoch 1's scalars
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(stopped)).Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [1]

    resumed = tmp_path / "resumed"
    if sig == signal.SIGTERM:  # resumed as a user does, on the command line
        proc = _cli([f"trainer.resume={stopped}", "trainer.progress=none", f"hydra.run.dir={resumed}"], tmp_path,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    else:  # the same resume in process (the command line's own is the SIGTERM case's)
        import logging

        caplog.set_level(logging.INFO)
        overrides = [f"trainer.resume={stopped}"]
        train(make_cfg(*overrides, run="resumed"), overrides=overrides)
        out = caplog.text
    assert f"(epoch 2, after step {ckpt['partial']['loader']['batches']})" in out
    assert "continuing epoch 2 after step" in out
    got = _metrics(resumed)
    for key in COMPARED:
        assert got[key] == uninterrupted[key], key


def test_second_signal_stops_at_once(tmp_path):
    """The first SIGINT only asks; the second ends the process by the signal itself, without clean-up."""
    script = (
        "import logging, sys, time\n"
        "logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(message)s')\n"
        "from cnnlab.engine.safety import StopSignals\n"
        "with StopSignals() as signals:\n"
        "    print('ready', flush=True)\n"
        "    while True:\n"
        "        time.sleep(0.01)  # a loop that never reaches a step boundary\n"
    )
    proc = subprocess.Popen([sys.executable, "-u", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        assert "SIGINT received: finishing the current step" in proc.stdout.readline()
        assert proc.poll() is None  # the first signal did not stop it
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGINT


def _kill_resume_loop(tmp_path: Path, kills: int, seed: int, budget_s: float, base=SHORT, delay=(2.0, 6.0)):
    """SIGKILL a run at random moments, resuming in place each time, then let it finish.

    After every kill the run dir's checkpoints must load (never a torn file); returns the run dir and the
    number of kills that landed before the run could finish.
    """
    rng = random.Random(seed)
    run_dir = tmp_path / "killed"
    args = [*base, "trainer.progress=none", f"hydra.run.dir={run_dir}"]
    last = run_dir / "checkpoints" / "last.ckpt"
    landed, deadline = 0, time.monotonic() + budget_s
    while landed < kills and time.monotonic() < deadline:
        resume = [f"trainer.resume={run_dir}"] if last.is_file() else []
        proc = _cli([*args, *resume], tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(*delay))  # start-up is ~3 s: kills land in start-up, training and checkpoints
        if proc.poll() is not None:  # it finished before the kill: that is the end of the loop
            assert proc.returncode == 0
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        landed += 1
        for name in ("last.ckpt", "best.ckpt"):
            path = run_dir / "checkpoints" / name
            if path.is_file():
                load_checkpoint(path)  # raises if torn or unreadable
    if not (run_dir / "metrics.json").is_file():
        resume = [f"trainer.resume={run_dir}"] if last.is_file() else []
        proc = _cli([*args, *resume], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        assert "passing over unreadable checkpoint" not in out
    return run_dir, landed


@pytest.mark.slow  # SIGKILLs at random moments of a CLI run
def test_sigkill_at_random_moments_then_resume_matches(tmp_path, uninterrupted):
    run_dir, landed = _kill_resume_loop(tmp_path, kills=3, seed=1, budget_s=120)
    assert landed >= 1
    got = _metrics(run_dir)
    for key in COMPARED:
        assert got[key] == uninterrupted[key], key


@pytest.mark.slow
def test_twenty_sigkills_then_resume_matches(tmp_path):
    """The promise in full: 20 kills at random moments, bounded to 10 minutes, and the same final metrics as
    the uninterrupted run (a longer run, so that 20 kills land before it can finish)."""
    long = [*SHORT[1:], "trainer.max_epochs=150"]  # ~40 s of training: 20 kills land before it can finish
    reference = tmp_path / "reference"
    proc = _cli([*long, "trainer.progress=none", f"hydra.run.dir={reference}"], tmp_path, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:]
    run_dir, landed = _kill_resume_loop(tmp_path, kills=20, seed=7, budget_s=600, base=long, delay=(2.0, 5.0))
    assert landed == 20
    got, want = _metrics(run_dir), _metrics(reference)
    for key in COMPARED:
        assert got[key] == want[key], key


@pytest.mark.slow  # SIGKILLs at random moments of a writer
def test_sigkill_during_checkpoint_writes_leaves_a_readable_file(tmp_path):
    """A process that does nothing but rewrite one big checkpoint is killed at random moments: the file on
    disk is always the previous complete checkpoint or the new one."""
    path = tmp_path / "last.ckpt"
    # One interpreter imports torch once, then per round forks a writer and SIGKILLs it at a random moment: the
    # kills land among the writes, never in an interpreter's start-up.
    supervisor = (
        "import os, random, signal, sys, time, torch\n"
        "from cnnlab.engine.checkpoint import config_hash, save_atomic\n"
        "config = {'model': {'name': 'mlp'}}\n"
        "rng = random.Random(3)\n"
        "for _ in sys.stdin:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:  # the writer: does nothing but rewrite the checkpoint\n"
        "        try:\n"
        "            torch.set_num_threads(1)\n"
        "            i = 0\n"
        "            while True:\n"
        "                i += 1\n"
        "                save_atomic({'model': {'w': torch.full((2_000_000,), float(i))}, 'config': config,\n"
        "                             'config_hash': config_hash(config), 'epoch': i}, sys.argv[1])\n"
        "        finally:\n"
        "            os._exit(1)\n"
        "    time.sleep(rng.uniform(0.1, 0.5))  # a write takes ~0.05 s: kills land before, in and after writes\n"
        "    os.kill(pid, signal.SIGKILL)\n"
        "    os.waitpid(pid, 0)\n"
        "    print('killed', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", supervisor, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    seen = set()
    try:
        for _ in range(8):
            proc.stdin.write("next\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "killed"
            if not path.is_file():
                continue
            ckpt = load_checkpoint(path)
            assert torch.all(ckpt["model"]["w"] == float(ckpt["epoch"]))  # whole, never mixed
            seen.add(ckpt["epoch"])
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert seen
    # A kill may leave temp files; they are hidden names that no reader looks for, never a second checkpoint.
    others = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(name.startswith(".last.ckpt.") and name.endswith(".tmp") for name in others), others


def _nan_at(monkeypatch, calls: set[int]):
    """Make the training loss NaN on the given (1-based) calls of the loss in training mode."""
    real = Loss.__call__
    count = {"n": 0}

    def loss(self, logits, target):
        value = real(self, logits, target)
        if torch.is_grad_enabled():
            count["n"] += 1
            if count["n"] in calls:
                return value * float("nan")
        return value

    monkeypatch.setattr(Loss, "__call__", loss)


def test_nan_loss_stops_with_a_diagnosis_and_keeps_the_last_good_checkpoint(make_cfg, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {40 + 7})  # epoch 2, step 7
    with pytest.raises(RunError, match="the loss is nan at epoch 2, step 7") as err:
        train(make_cfg(*SHORT), overrides=[])
    message = str(err.value)
    assert "the loss is nan at epoch 2, step 7 (global step 47)" in message
    assert "optimizer.lr" in message and "data.mean" in message and "model.init" in message
    assert "last good checkpoint" in message and "(epoch 1)" in message
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_weights_gone_bad_are_never_checkpointed(make_cfg, tmp_path, monkeypatch):
    """Finite training losses but a non-finite val/loss (the last step's update broke the weights): the
    epoch's checkpoint is not written."""
    from cnnlab.engine.trainer import Trainer

    real_evaluate = Trainer.evaluate

    def evaluate(self, loader, prefix, with_confusion=False):
        result = real_evaluate(self, loader, prefix, with_confusion)
        if prefix == "val" and self.epoch == 1:  # during epoch 2
            result = {**result, "val/loss": float("inf")}
        return result

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    with pytest.raises(RunError, match="val/loss is inf after the epoch at epoch 2.*\\(epoch 1\\), is kept"):
        train(make_cfg(*SHORT), overrides=[])
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["epoch"] == 1


def test_nan_steps_can_be_skipped_and_counted(make_cfg, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {3, 50, 51})
    metrics = train(make_cfg(*SHORT, "trainer.nonfinite=skip"), overrides=[])
    assert metrics["epochs_completed"] == 4 and torch.isfinite(torch.tensor(metrics["test/loss"]))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run")).Reload()
    assert [e.value for e in events.Scalars("train/nonfinite_steps")] == [1, 3, 3, 3]


def test_full_disk_on_a_checkpoint_write_keeps_the_previous_one(make_cfg, tmp_path, monkeypatch):
    import cnnlab.engine.checkpoint as checkpoint

    real_replace = checkpoint.os.replace
    writes = {"n": 0}

    real_fsync = checkpoint.os.fsync

    def fsync_fails_on_second_epoch(fd):
        try:  # only checkpoint files count (other files, e.g. metrics.csv, are synced too)
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if "last.ckpt" not in name:
            return real_fsync(fd)
        writes["n"] += 1
        if writes["n"] >= 2:  # epoch 2's last.ckpt: the data is written, syncing it finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", fsync_fails_on_second_epoch)
    with pytest.raises(RunError, match="the disk is full") as err:
        train(make_cfg(*SHORT, "trainer.checkpoint.save_best=false", "trainer.test_with=last"), overrides=[])
    message = str(err.value)
    assert "last.ckpt: the disk is full" in message and "paths.output_root" in message
    assert "(epoch 1), is kept" in message or "(epoch 2), is kept" in message
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 1  # the previous checkpoint, whole
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))  # the failed temp file was removed


def test_full_disk_on_the_event_file_is_a_clear_error(make_cfg, tmp_path, monkeypatch):
    from tensorboard.summary.writer import record_writer

    real_write = record_writer.RecordWriter.write
    calls = {"n": 0}

    def write(self, data):
        calls["n"] += 1
        if calls["n"] > 30:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    with pytest.raises(RunError, match="the disk is full") as err:
        train(make_cfg(*SHORT, "logger.flush_secs=1"), overrides=[])
    assert "the disk is full" in str(err.value) and "events" in str(err.value)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["epoch"] >= 1


def test_out_of_memory_suggests_what_to_change(make_cfg, tmp_path, monkeypatch):
    from cnnlab.models.lenet import LeNet5

    real_forward = LeNet5.forward
    calls = {"n": 0}

    def forward(self, x):
        calls["n"] += 1
        if calls["n"] == 60 and torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, x)

    monkeypatch.setattr(LeNet5, "forward", forward)
    with pytest.raises(RunError, match="out of memory during training epoch 2") as err:
        train(make_cfg(*SHORT), overrides=[])
    message = str(err.value)
    assert "out of memory during training epoch 2" in message
    assert "data.batch_size=16" in message and "trainer.precision=bf16" in message
    assert "(epoch 1), is kept" in message


def test_resume_passes_over_an_unreadable_checkpoint_and_says_which(make_cfg, tmp_path, caplog):
    import logging
    import shutil

    train(make_cfg(*SHORT, "trainer.max_epochs=2", "scheduler=step"), overrides=[])
    folder = tmp_path / "run" / "checkpoints"
    shutil.copy(folder / "last.ckpt", tmp_path / "good.ckpt")
    (folder / "best.ckpt").unlink()
    shutil.copy(tmp_path / "good.ckpt", folder / "best.ckpt")  # a separate file, not a link to last
    (folder / "last.ckpt").write_bytes(b"torn")
    caplog.set_level(logging.INFO)
    overrides = [f"trainer.resume={tmp_path / 'run'}", "trainer.max_epochs=3"]
    metrics = train(make_cfg(*overrides, run="again"), overrides=overrides)
    assert "passing over unreadable checkpoint last.ckpt" in caplog.text
    assert f"resuming from {folder / 'best.ckpt'} (end of epoch 2)" in caplog.text
    assert metrics["epochs_completed"] == 3


def test_resume_with_a_config_that_changes_the_model_says_what_differs(make_cfg, tmp_path):
    train(make_cfg(*SHORT, "trainer.max_epochs=1"), overrides=[])
    overrides = [f"trainer.resume={tmp_path / 'run'}", "model.activation=tanh", "data.input_size=[32,32]"]
    with pytest.raises(ConfigError, match="model.activation: 'relu' in the checkpoint, 'tanh' now") as err:
        train(make_cfg(*overrides, run="again"), overrides=overrides)
    text = str(err.value)
    assert "model.activation: 'relu' in the checkpoint, 'tanh' now" in text
    assert "data.input_size: [28, 28] in the checkpoint, [32, 32] now" in text


def test_a_one_cycle_run_cannot_be_stretched_on_resume(make_cfg, tmp_path):
    train(make_cfg(*SHORT, "trainer.max_epochs=1"), overrides=[])
    overrides = [f"trainer.resume={tmp_path / 'run'}", "trainer.max_epochs=3"]
    with pytest.raises(ConfigError, match="(?s)trainer.max_epochs: 1 in the checkpoint, 3 now.*scheduler=onecycle plans"):
        train(make_cfg(*overrides, run="again"), overrides=overrides)


def test_a_checkpoint_cannot_make_cnnlab_instantiate_an_untrusted_class(make_cfg, tmp_path):
    train(make_cfg(*SHORT, "trainer.max_epochs=1"), overrides=[])
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(path)
    marker = tmp_path / "pwned"
    ckpt["config"]["optimizer"]["_target_"] = "os.system"
    ckpt["config"]["optimizer"]["command"] = f"touch {marker}"
    ckpt["config_hash"] = config_hash(ckpt["config"])  # a consistent, deliberately crafted file
    torch.save(ckpt, tmp_path / "crafted.ckpt")
    overrides = [f"trainer.resume={tmp_path / 'crafted.ckpt'}"]
    with pytest.raises(ConfigError, match="optimizer._target_='os.system' in the config saved in .*crafted.ckpt is "
                                          "not trusted"):
        train(make_cfg(*overrides, run="again"), overrides=overrides)
    assert not marker.exists()


def test_an_aliased_or_non_class_target_is_not_trusted_even_under_a_trusted_prefix(make_cfg, tmp_path):
    """Hydra walks attributes through module globals: a path that starts like a trusted one but reaches a
    function through an imported module (here shutil.copy2 via torch.optim's own imports) must be refused."""
    train(make_cfg(*SHORT, "trainer.max_epochs=1"), overrides=[])
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    victim, copy = tmp_path / "victim.txt", tmp_path / "copied.txt"
    victim.write_text("secret")
    ckpt["config"]["optimizer"]["betas"] = {"_target_": "torch.optim.optimizer.torch.serialization.shutil.copy2",
                                            "_args_": [str(victim), str(copy)]}
    ckpt["config_hash"] = config_hash(ckpt["config"])
    torch.save(ckpt, tmp_path / "crafted.ckpt")
    overrides = [f"trainer.resume={tmp_path / 'crafted.ckpt'}"]
    with pytest.raises(ConfigError, match="optimizer.betas._target_=.* is not trusted"):
        train(make_cfg(*overrides, run="again"), overrides=overrides)
    assert not copy.exists()


def test_a_mid_epoch_checkpoint_refuses_a_new_batch_size(make_cfg, tmp_path, monkeypatch):
    """'After batch k of epoch e' means nothing with another batch size: resuming such a checkpoint says so."""
    import os

    from cnnlab.engine.trainer import Trainer
    from cnnlab.errors import TrainingStopped

    real_step = Trainer.train_step

    def step(self, x, y, epoch=0, step=0):
        result = real_step(self, x, y, epoch, step)
        if self.global_step == 45:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the run: stop after this step
        return result

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM"):
        train(make_cfg(*SHORT), overrides=[])
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["partial"]["loader"]["batches"] == 6
    overrides = [f"trainer.resume={tmp_path / 'run'}", "data.batch_size=64"]
    with pytest.raises(ConfigError, match="data.batch_size: 32 in the checkpoint, 64 now"):
        train(make_cfg(*overrides, run="again"), overrides=overrides)


def test_progress_after_a_mid_epoch_resume_counts_on_from_the_true_step(make_cfg, tmp_path, monkeypatch, caplog):
    import logging
    import os

    from cnnlab.engine.trainer import Trainer
    from cnnlab.errors import TrainingStopped

    real_step = Trainer.train_step

    def step(self, x, y, epoch=0, step=0):
        result = real_step(self, x, y, epoch, step)
        if self.global_step == 45:  # epoch 2, its 6th batch
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM"):
        train(make_cfg(*SHORT), overrides=[])
    monkeypatch.setattr(Trainer, "train_step", real_step)
    caplog.set_level(logging.INFO)
    overrides = [f"trainer.resume={tmp_path / 'run'}", "trainer.progress=plain", "trainer.log_every_n_steps=1"]
    train(make_cfg(*SHORT, *overrides, run="again"), overrides=overrides)
    epoch2 = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 2/4  step ")]
    assert epoch2[0].startswith("epoch 2/4  step 7/40") and epoch2[-1].startswith("epoch 2/4  step 40/40")
