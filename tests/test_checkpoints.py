"""Checkpoints: atomic writes, round trips, safe loading, and clear errors for the wrong file."""

from __future__ import annotations

import logging
import pickle
import shutil

import pytest
import torch

from cnnlab.engine.checkpoint import check_source, config_hash, find_checkpoint, load_checkpoint, save_atomic
from cnnlab.engine.checkpoint_writer import CheckpointWriter
from cnnlab.errors import ConfigError
from cnnlab.run.weights import load_trained_model
from cnnlab.run.lifecycle import train


def _minimal(weights: dict, name: str = "lenet5") -> dict:
    """The least a checkpoint holds: weights, a config naming the model, and the config's hash."""
    config = {"model": {"name": name}}
    return {"model": weights, "config": config, "config_hash": config_hash(config)}


def test_checkpoint_holds_what_resume_needs(trained_run):
    run_dir, _ = trained_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    for key in ("model", "optimizer", "schedule", "scaler", "epoch", "global_step", "rng", "config", "monitored",
                "history", "format_version"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 3 and len(ckpt["history"]) == 3
    assert ckpt["config"]["model"]["name"] == "lenet5"
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)


def test_round_trip_gives_identical_predictions(trained_run, tmp_path):
    run_dir, _ = trained_run
    loaded = load_trained_model(find_checkpoint(run_dir, "ckpt")[0], torch.device("cpu"))
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        before = loaded.model(x)
    save_atomic(_minimal(loaded.model.state_dict()), tmp_path / "copy.ckpt")
    again = load_checkpoint(tmp_path / "copy.ckpt")
    loaded.model.load_state_dict(again["model"])
    with torch.inference_mode():
        assert torch.equal(before, loaded.model(x))


def test_atomic_writes_leave_no_temp_files(tmp_path):
    writer = CheckpointWriter()
    weights = torch.nn.Linear(3, 2).state_dict()
    writer.submit(_minimal(weights), [tmp_path / "best.ckpt", tmp_path / "last.ckpt"])
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.equal(load_checkpoint(tmp_path / "last.ckpt")["model"]["weight"], weights["weight"])


def test_snapshot_is_taken_at_submit_time(tmp_path):
    layer = torch.nn.Linear(3, 2)
    writer = CheckpointWriter()
    expected = layer.weight.detach().clone()
    writer.submit(_minimal(layer.state_dict()), [tmp_path / "last.ckpt"])
    with torch.no_grad():
        layer.weight.add_(1.0)  # training goes on while the write is queued
    writer.close()
    assert torch.equal(load_checkpoint(tmp_path / "last.ckpt")["model"]["weight"], expected)


def test_run_dir_resolves_to_best_then_last(trained_run, tmp_path):
    run_dir, _ = trained_run
    path, ckpt = find_checkpoint(run_dir, "ckpt")
    assert path.name == "best.ckpt" and ckpt["epoch"] == load_checkpoint(path)["epoch"]
    assert find_checkpoint(run_dir / "checkpoints", "ckpt")[0].name == "best.ckpt"  # the folder itself
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", folder / "last.ckpt")
    assert find_checkpoint(tmp_path / "run", "ckpt")[0].name == "last.ckpt"  # no best.ckpt: last.ckpt
    with pytest.raises(ConfigError, match="ckpt=/definitely/not/here: no such file"):
        find_checkpoint("/definitely/not/here", "ckpt")
    with pytest.raises(ConfigError, match=r"ckpt=.*: no checkpoint in that directory \(looked for .*best.ckpt"):
        find_checkpoint(tmp_path, "ckpt")


def test_resume_takes_the_newest_state_and_weights_the_best(trained_run, tmp_path):
    """One rule, two purposes: resume continues from the checkpoint furthest into training, eval, predict and
    finetune take the best weights."""
    run_dir, _ = trained_run
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    torch.save(last, folder / "last.ckpt")
    torch.save(dict(last, epoch=1), folder / "best.ckpt")  # the hash covers the config only
    assert find_checkpoint(tmp_path / "run", "trainer.resume", purpose="resume")[0].name == "last.ckpt"
    assert find_checkpoint(tmp_path / "run", "ckpt", purpose="weights")[0].name == "best.ckpt"
    # a best.ckpt further into training than last.ckpt (e.g. last.ckpt from an older run) is the newer state
    torch.save(dict(last, epoch=5), folder / "best.ckpt")
    assert find_checkpoint(tmp_path / "run", "trainer.resume", purpose="resume")[0].name == "best.ckpt"


def test_an_unreadable_best_checkpoint_falls_back_to_last_with_a_warning(trained_run, tmp_path, caplog):
    run_dir, _ = trained_run
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", folder / "last.ckpt")
    (folder / "best.ckpt").write_bytes(b"")
    caplog.set_level(logging.WARNING)
    path, ckpt = find_checkpoint(tmp_path / "run", "ckpt")
    assert path.name == "last.ckpt" and "model" in ckpt
    assert "passing over unreadable checkpoint best.ckpt" in caplog.text and "empty or cut short" in caplog.text
    (folder / "last.ckpt").write_bytes(b"torn")
    with pytest.raises(ConfigError, match=r"ckpt=.*: no readable checkpoint in that directory: best.ckpt \(.*; last.ckpt"):
        find_checkpoint(tmp_path / "run", "ckpt")


def test_pickled_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("executed",))

    bad = tmp_path / "evil.ckpt"
    with open(bad, "wb") as f:
        pickle.dump({"model": Exploit(), "config": {}}, f)
    with pytest.raises(ConfigError, match="not a readable cnnlab checkpoint"):
        load_checkpoint(bad)


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ConfigError, match="junk.ckpt"):
        load_checkpoint(junk)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ConfigError, match="not a cnnlab checkpoint"):
        load_checkpoint(other)


def test_checkpoint_of_another_architecture_is_refused(trained_run, make_cfg):
    run_dir, _ = trained_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    ckpt["config"]["model"]["name"] = "resnet20"
    ckpt["config_hash"] = config_hash(ckpt["config"])
    forged = run_dir.parent / "other_arch.ckpt"
    torch.save(ckpt, forged)
    # The user asks to continue that checkpoint with LeNet-5 on the command line.
    overrides = [f"trainer.resume={forged}", "model=lenet5"]
    with pytest.raises(ConfigError, match="cannot continue that checkpoint \\(model.name: 'resnet20' in the "
                                          "checkpoint, 'lenet5' now\\)"):
        train(make_cfg(*overrides), overrides=overrides)


def test_checkpoint_whose_config_was_altered_is_refused(trained_run, make_cfg):
    run_dir, _ = trained_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    ckpt["config"]["optimizer"]["lr"] = 1.0  # edited without updating the stored hash
    altered = run_dir.parent / "altered.ckpt"
    torch.save(ckpt, altered)
    with pytest.raises(ConfigError, match="altered.ckpt: the config stored in the checkpoint does not match its hash"):
        train(make_cfg(f"trainer.resume={altered}"), overrides=[f"trainer.resume={altered}"])


def test_checkpoint_with_other_shapes_is_refused(trained_run, tmp_path):
    run_dir, _ = trained_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    ckpt["model"]["classifier.5.weight"] = torch.zeros(3, 84)
    forged = tmp_path / "shapes.ckpt"
    torch.save(ckpt, forged)
    with pytest.raises(ConfigError, match="does not fit the configured 'lenet5' model"):
        load_trained_model(forged, torch.device("cpu"))


def test_check_source_serves_resume_and_finetune_messages():
    ckpt = {"config": {"model": {"name": "lenet5"}, "data": {"in_channels": 1}}, "model": {"w": torch.zeros(2)}}
    check_source(ckpt, ckpt["model"], "a.pt", "lenet5", 1, "checkpoint a.pt", "same")  # all fits: no error
    with pytest.raises(ConfigError, match=r"finetune\.checkpoint=a\.pt holds a 'lenet5' model, but the config "
                                            r"builds model.name='vgg11'; fine-tune with the same architecture "
                                            r"\(model=lenet5\)"):
        check_source(ckpt, ckpt["model"], "a.pt", "vgg11", 1, "finetune.checkpoint=a.pt",
                     "fine-tune with the same architecture (model={saved})", channels_key="finetune.checkpoint")
    with pytest.raises(ConfigError, match=r"^finetune\.checkpoint=a\.pt holds a model for 1-channel"):
        check_source(ckpt, ckpt["model"], "a.pt", "lenet5", 3, "x", "y", channels_key="finetune.checkpoint")
    bad = {"w": torch.tensor([float("nan")])}
    with pytest.raises(ConfigError, match=r"^checkpoint a\.pt holds weights that are not finite"):
        check_source(ckpt, bad, "a.pt", "lenet5", 1, "checkpoint a.pt", "same")
