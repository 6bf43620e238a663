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


def test_the_table_gives_each_pairs_ratio_the_median_against_the_target_and_each_seeds_accuracy_once():
    rows = [{"seed": s, "round": 0, "order": "cnnlab first", "cnnlab_s": c, "textbook_s": 20.0, "cnnlab_acc": 0.9,
             "textbook_acc": 0.88} for s, c in enumerate([10.0, 11.0, 14.0])]
    text = bench_whole_run.table(rows)
    assert "| 1 | 0 | cnnlab first | 11.0 | 20.0 | 0.550 | 0.9000 | 0.8800 |" in text
    assert "median ratio cnnlab/textbook **0.550** (quartiles 0.525-0.625, 3 pairs): meets the 0.6x target" in text
    assert bench_whole_run.summary([{**rows[0], "cnnlab_s": 13.0}])["meets"] is False
    # a second round of seed 0 adds a ratio, not an accuracy: the mean and std are over seeds
    again = {**rows[0], "round": 1, "cnnlab_s": 16.0, "cnnlab_acc": 0.5}
    s = bench_whole_run.summary([rows[0], again, {**rows[1], "cnnlab_acc": 0.8}])
    assert s["ratio_quartiles"] == (0.525, 0.55, 0.675) and (s["seeds"], s["pairs"]) == (2, 3)
    assert s["acc_mean"]["cnnlab"] == pytest.approx(0.85) and s["acc_std"]["cnnlab"] == pytest.approx(0.0707, abs=1e-4)


def test_the_sides_alternate_abba_over_rounds_and_seeds(monkeypatch, tmp_path, capsys):
    calls = []

    def timed(cmd, env):
        side = "cnnlab" if "cnnlab.cli.train" in cmd else "textbook"
        calls.append(side)
        return float(len(calls)), json.dumps({"test_acc": 0.5, "train_loss": 1.0})

    monkeypatch.setattr(bench_whole_run, "timed", timed)
    monkeypatch.setattr(bench_whole_run, "cnnlab_result", lambda run_dir: {"acc": 0.6, "precision": "bf16",
                                                                           "best_epoch": 1})
    monkeypatch.setattr(sys, "argv", ["bench_whole_run.py", "--seeds", "0", "1", "--rounds", "2",
                                      "--json", str(tmp_path / "w.json")])
    bench_whole_run.main()
    c, t = "cnnlab", "textbook"
    assert calls == [c, t, t, c, t, c, c, t]
    rows = json.loads((tmp_path / "w.json").read_text())["rows"]
    assert [(r["seed"], r["round"], r["order"]) for r in rows] == [
        (0, 0, "cnnlab first"), (0, 1, "textbook first"), (1, 0, "textbook first"), (1, 1, "cnnlab first")]
    assert [(r["cnnlab_s"], r["textbook_s"]) for r in rows] == [(1, 2), (4, 3), (6, 5), (7, 8)]
    assert "| 1 | 1 | cnnlab first | 7.0 | 8.0 | 0.875 | 0.6000 | 0.5000 |" in capsys.readouterr().out


@pytest.mark.slow  # generates the 6,000 shapes twice
def test_the_textbook_script_trains_on_cnnlabs_split_and_network():
    import textbook_train
    from omegaconf import OmegaConf

    from cnnlab.data.shapes import generate
    from cnnlab.engine.optim import build_optimizer

    parts, mean, std, batch_size, eval_batch_size, classes = textbook_train.shapes_splits(seed=3)
    assert (len(parts["train"][1]), len(parts["val"][1]), len(parts["test"][1])) == (4800, 600, 600)
    assert (batch_size, eval_batch_size, classes) == (128, 500, 8) and len(mean) == len(std) == 3
    images, _ = generate(6000, 32, 0, 0.08)
    assert any(torch.equal(parts["test"][0][0], image) for image in images[:60])  # the generated images themselves
    a, b = textbook_train.resnet20(8, seed=3), textbook_train.resnet20(8, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # the optimizer cnnlab builds from optimizer=sgd: the same settings and the same parameters decayed
    ours = build_optimizer(OmegaConf.load(REPO / "configs" / "optimizer" / "sgd.yaml"), a)
    theirs = textbook_train.sgd(a)
    assert [({id(p) for p in g["params"]}, {k: v for k, v in g.items() if k != "params"}) for g in ours.param_groups] \
        == [({id(p) for p in g["params"]}, {k: v for k, v in g.items() if k != "params"}) for g in theirs.param_groups]


@pytest.mark.slow
def test_one_seed_of_both_sides_runs_and_is_recorded(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_whole_run.py"), "--seeds", "0", "--epochs", "1",
                          "--cnnlab-override", "trainer.limit_train_batches=1", "--textbook-arg=--limit-batches=1",
                          "--json", str(tmp_path / "w.json")], env=cli_env(), check=True, capture_output=True,
                         text=True, timeout=600).stdout
    record = json.loads((tmp_path / "w.json").read_text())
    row = record["rows"][0]
    assert row["cnnlab_s"] > 0 and row["textbook_s"] > 0 and 0 <= row["textbook_acc"] <= 1
    assert 0 <= row["cnnlab_acc"] <= 1 and row["cnnlab_precision"] in ("32", "bf16")
    assert record["machine"]["torch_threads"] >= 1 and record["machine"]["load_before"]
    assert "trainer.limit_train_batches=1" in record["commands"]["cnnlab"]
    ratio = row["cnnlab_s"] / row["textbook_s"]
    assert f"| 0 | 0 | cnnlab first | {row['cnnlab_s']:.1f} | {row['textbook_s']:.1f} | {ratio:.3f} |" in out
    assert f"median ratio cnnlab/textbook **{ratio:.3f}** (quartiles {ratio:.3f}-{ratio:.3f}, 1 pairs)" in out
    assert "load average before" in out and "load average after" in out
