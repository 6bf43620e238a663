"""scripts/bench_whole_run.py and scripts/textbook_train.py, whose table is in docs/benchmarks.md: the pair trains on
the same images with the same network, and the table reads the ratio and the accuracies right."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, cli_env

sys.path.insert(0, str(REPO / "scripts"))
import bench_whole_run  # noqa: E402


def test_the_table_gives_each_seeds_ratio_and_the_median_against_the_target():
    rows = [{"seed": s, "order": "cnnlab, textbook", "cnnlab_s": c, "textbook_s": 20.0, "cnnlab_acc": 0.9,
             "textbook_acc": 0.88} for s, c in enumerate([10.0, 11.0, 14.0])]
    text = bench_whole_run.table(rows)
    assert "| 1 | cnnlab, textbook | 11.0 | 20.0 | 0.550 | 0.9000 | 0.8800 |" in text
    assert "median ratio cnnlab/textbook **0.550** (quartiles 0.525-0.625): meets the 0.6x target" in text
    assert bench_whole_run.summary([{**rows[0], "cnnlab_s": 13.0}])["meets"] is False


@pytest.mark.slow  # generates the 6,000 shapes twice
def test_the_textbook_script_trains_on_cnnlabs_split_and_network():
    import textbook_train

    from cnnlab.data.shapes import generate

    parts, mean, std, batch_size, classes = textbook_train.shapes_splits(seed=3)
    assert (len(parts["train"][1]), len(parts["val"][1]), len(parts["test"][1])) == (4800, 600, 600)
    assert batch_size == 128 and classes == 8 and len(mean) == len(std) == 3
    images, _ = generate(6000, 32, 0, 0.08)
    assert any(torch.equal(parts["test"][0][0], image) for image in images[:60])  # the generated images themselves
    a, b = textbook_train.resnet20(8, seed=3), textbook_train.resnet20(8, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_one_seed_of_both_sides_runs_and_is_recorded(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "bench_whole_run.py"), "--seeds", "0", "--epochs", "1",
                    "--cnnlab-override", "trainer.limit_train_batches=1", "--textbook-arg=--limit-batches=1",
                    "--json", str(tmp_path / "w.json")], env=cli_env(), check=True, capture_output=True, timeout=600)
    record = json.loads((tmp_path / "w.json").read_text())
    row = record["rows"][0]
    assert row["cnnlab_s"] > 0 and row["textbook_s"] > 0 and 0 <= row["textbook_acc"] <= 1
    assert row["cnnlab_precision"] in ("32", "bf16")
