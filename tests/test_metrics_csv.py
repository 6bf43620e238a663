"""metrics.csv: one row per epoch with every scalar the epoch logged, read back with the csv module alone; a resumed
run holds each epoch once."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest

from cnnlab.engine.metrics_csv import MetricsCSV
from cnnlab.run.lifecycle import train
from runs import KillAfter, fit

COMMON = ["data=digits", "data.input_size=[8,8]", "model=mlp", "model.hidden=[32]", "augment=none", "logger=none",
          "trainer.summary=none", "trainer.max_epochs=5", "trainer.limit_train_batches=5"]


def read(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def assert_rows_equal_history(path, history):
    header, rows = read(path)
    assert len(rows) == len(history)
    assert header[0] == "epoch" and {"val/acc", "val/loss", "train/loss", "lr", "throughput/img_s"} <= set(header)
    for row, logged in zip(rows, history):
        assert set(header) >= set(logged)
        for key, value in logged.items():
            assert float(row[key]) == value, (logged["epoch"], key)  # the same number, not a rounding of it


def test_every_run_dir_gets_one_row_per_epoch_with_what_the_epoch_logged(make_cfg, tmp_path):
    _, history = fit(make_cfg(*COMMON))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert_rows_equal_history(tmp_path / "run" / "metrics.csv", history)


def test_a_key_that_appears_later_rewrites_the_header(tmp_path):
    path = tmp_path / "metrics.csv"
    writer = MetricsCSV(path)
    trainer = SimpleNamespace(history=[])
    writer.on_fit_start(trainer)
    assert not path.exists()
    writer.on_epoch_end(trainer, {"train/loss": 0.5, "val/acc": 0.25, "epoch": 1})
    writer.on_epoch_end(trainer, {"train/loss": 0.25, "val/acc": 0.5, "data/unreadable_skipped": 3, "epoch": 2})
    writer.on_epoch_end(trainer, {"train/loss": 0.125, "val/acc": 0.75, "epoch": 3, "test/per_class": {"a": 1.0}})
    header, rows = read(path)
    assert header == ["epoch", "train/loss", "val/acc", "data/unreadable_skipped"]
    assert [r["data/unreadable_skipped"] for r in rows] == ["", "3", ""]
    assert [float(r["val/acc"]) for r in rows] == [0.25, 0.5, 0.75]


@pytest.mark.parametrize("in_place", [True, False])
def test_a_resumed_run_holds_each_epoch_once(make_cfg, tmp_path, in_place):
    """Killed after epoch 4, resumed from the checkpoint of epoch 2: in its own dir, rows 3 and 4 of the killed run
    are replaced by the resumed run's; in a new dir, the file starts with the checkpoint's epochs 1-2."""
    _, reference = fit(make_cfg(*COMMON, run="full"))
    args = [*COMMON, "trainer.checkpoint.save_top_k=5"]  # every epoch's checkpoint stays
    with pytest.raises(KeyboardInterrupt, match="simulated kill after epoch 4"):
        train(make_cfg(*args, run="killed"), overrides=[], callbacks=(KillAfter(4),))
    assert len(read(tmp_path / "killed" / "metrics.csv")[1]) == 4
    epoch_2 = next((tmp_path / "killed" / "checkpoints").glob("epoch_002-*.ckpt"))

    overrides = [f"trainer.resume={epoch_2}"]
    run = "killed" if in_place else "resumed"
    _, history = fit(make_cfg(*overrides, run=run), overrides)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert_rows_equal_history(tmp_path / run / "metrics.csv", history)
    _, rows = read(tmp_path / run / "metrics.csv")
    assert [float(r["val/loss"]) for r in rows] == [h["val/loss"] for h in reference]  # CPU resume is exact
