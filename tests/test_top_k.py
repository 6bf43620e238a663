"""trainer.checkpoint.save_top_k: the k best epochs' checkpoints beside best/last.ckpt, the others deleted; a resumed
run continues the set and never deletes the checkpoint it started from."""

from __future__ import annotations

import math

import pytest

from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.top_k import TopK, file_name, parse
from cnnlab.errors import ConfigError
from cnnlab.run.lifecycle import prepare, train
from runs import KillAfter

# Noisy SGD on the 8x8 digits (~0.1 s an epoch): the validation loss goes up and down, so files are replaced.
COMMON = ["data=digits", "data.input_size=[8,8]", "model=mlp", "model.hidden=[32]", "augment=none", "logger=none",
          "trainer.summary=none", "optimizer=sgd", "optimizer.lr=0.3", "optimizer.momentum=0.9", "scheduler=none",
          "trainer.max_epochs=6", "trainer.limit_train_batches=6", "trainer.checkpoint.save_top_k=2"]


def top_k_files(folder) -> dict[str, int]:
    """The top-k files in a checkpoints folder: name -> the epoch its checkpoint holds."""
    return {p.name: load_checkpoint(p)["epoch"] for p in sorted(folder.iterdir()) if parse(p.name)}


def best_epochs(history, k, monitor="val/loss", mode="min") -> list[int]:
    ranked = sorted(history, key=lambda h: ((h[monitor] if mode == "min" else -h[monitor]), h["epoch"]))
    return sorted(h["epoch"] for h in ranked[:k])


@pytest.mark.parametrize("monitor,mode", [("val/loss", "min"), ("val/acc", "max")])
def test_exactly_the_k_best_epochs_are_kept(make_cfg, tmp_path, monitor, mode):
    train(make_cfg(*COMMON, f"trainer.monitor={monitor}"), overrides=[])
    folder = tmp_path / "run" / "checkpoints"
    history = load_checkpoint(folder / "last.ckpt")["history"]
    files = top_k_files(folder)
    assert sorted(files.values()) == best_epochs(history, 2, monitor, mode)
    for name, epoch in files.items():
        assert name == file_name(epoch, monitor, history[epoch - 1][monitor])  # e.g. epoch_004-val_loss_0.2735.ckpt
    assert {1, 2} - set(files.values()), "no file was ever replaced: the run does not exercise deletion"
    assert {"best.ckpt", "last.ckpt"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp files left


def test_the_set_ranks_by_mode_keeps_the_earlier_of_ties_and_never_takes_nan(tmp_path):
    top = TopK(tmp_path, 2, "val/acc", "max")
    assert top.offer(1, 0.5) == (tmp_path / "epoch_001-val_acc_0.5000.ckpt", [])
    assert top.offer(2, float("nan")) == (None, [])
    assert top.offer(3, 0.7)[1] == []
    assert top.offer(4, 0.5) == (None, [])  # ties epoch 1: the earlier stays
    path, replaced = top.offer(5, 0.9)
    assert path.name == "epoch_005-val_acc_0.9000.ckpt" and replaced == [tmp_path / "epoch_001-val_acc_0.5000.ckpt"]
    assert [e for e, _, _ in top.entries] == [5, 3]
    assert parse("epoch_012-val_acc_top5_0.1234.ckpt") == (12, "val_acc_top5", 0.1234)
    assert parse("last.ckpt") is None and parse("best.ckpt") is None and math.isnan(parse("epoch_1-x_nan.ckpt")[2])


def test_a_resumed_run_continues_the_set_and_never_deletes_its_source(make_cfg, tmp_path):
    train(make_cfg(*COMMON, run="full"), overrides=[])
    expected = top_k_files(tmp_path / "full" / "checkpoints")
    with pytest.raises(KeyboardInterrupt, match="simulated kill after epoch 3"):
        train(make_cfg(*COMMON, run="killed"), overrides=[], callbacks=(KillAfter(3),))
    killed = tmp_path / "killed" / "checkpoints"
    at_kill = top_k_files(killed)
    assert len(at_kill) == 2 and load_checkpoint(killed / "last.ckpt")["top_k"]["entries"]

    # into a new run dir: the set's files are linked over, and it ends as the uninterrupted run's did
    overrides = [f"trainer.resume={tmp_path / 'killed'}"]
    resumed = prepare(make_cfg(*overrides, run="resumed"), overrides=overrides)
    assert top_k_files(tmp_path / "resumed" / "checkpoints") == at_kill
    resumed.trainer.fit(resumed.data.train, resumed.data.val)
    resumed.trainer.teardown()
    assert top_k_files(tmp_path / "resumed" / "checkpoints") == expected
    assert top_k_files(killed) == at_kill  # the other run's files are its own

    # in place, from the worse of the two top-k files at the kill, which the later epochs push out of the set
    source_name = max(at_kill, key=lambda name: parse(name)[2])
    assert source_name not in expected, "the source would stay in the set anyway: the test shows nothing"
    overrides = [f"trainer.resume={killed / source_name}"]
    train(make_cfg(*overrides, run="killed"), overrides=overrides)
    assert top_k_files(killed) == {**expected, source_name: at_kill[source_name]}
    assert {"best.ckpt", "last.ckpt"} <= {p.name for p in killed.iterdir()}


def test_a_negative_save_top_k_is_refused(make_cfg):
    with pytest.raises(ConfigError, match=r"trainer.checkpoint.save_top_k=-1 must be an integer >= 0"):
        prepare(make_cfg(*COMMON, "trainer.checkpoint.save_top_k=-1"), overrides=[])
