"""scripts/bench_compile.py, whose table is in docs/benchmarks.md: the compile time is a first round's excess
over steady rounds less the eager side's own, break-even epochs are compile time / per-epoch gain, and the
script runs end to end on a tiny case (a cold and a warm process on one inductor cache)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their shared helpers from scripts/
import bench_compile  # noqa: E402  (imported at collection: importing torch the first time runs ldconfig)


def test_break_even_is_compile_time_over_the_gain_and_never_without_one():
    assert bench_compile.break_even(30.0, 6.0) == 5.0
    assert bench_compile.break_even(-1.0, 6.0) == 0.0  # a warm cache can measure below zero: nothing to repay
    assert math.isinf(bench_compile.break_even(30.0, 0.0))
    assert math.isinf(bench_compile.break_even(30.0, -2.0))  # compiled steps slower: it never repays
    assert bench_compile.fmt_epochs(math.inf) == "never"


def test_summary_subtracts_the_eager_first_use_costs_and_counts_the_epochs_batches():
    cold = {"case": "resnet20:shapes:128", "precision": "fp32", "steps": 4, "batches_per_epoch": 10,
            "eager_first_s": 5.0, "eager_rounds_s": [4.0, 4.0], "compiled_first_s": 63.0,
            "compiled_rounds_s": [2.0, 2.0], "in_process_first_s": 2.5, "in_process_next_s": 2.0}
    warm = dict(cold, compiled_first_s=13.0, eager_first_s=4.0)
    row = bench_compile.summarize(cold, warm)
    assert (row["eager_ms"], row["compiled_ms"], row["ratio"]) == (1000.0, 500.0, 0.5)
    assert row["compile_cold_s"] == 60.0   # 63 - 2 steady, less the eager side's 5 - 4
    assert row["compile_warm_s"] == 11.0
    assert row["compile_in_process_s"] == 0.5
    assert row["gain_per_epoch_s"] == 5.0  # 10 batches x 0.5 s
    assert (row["break_even_cold"], row["break_even_warm"]) == (12.0, 2.2)


def test_cases_name_the_batch_and_an_optional_input_size():
    assert bench_compile.parse_case("resnet20:shapes:128") == ("resnet20", "shapes", 128, ["data.batch_size=128"])
    assert bench_compile.parse_case("resnet18:shapes:64:64")[3] == ["data.batch_size=64", "data.input_size=[64,64]"]
    with pytest.raises(ValueError):
        bench_compile.parse_case("resnet20:shapes")


@pytest.mark.slow
def test_the_script_runs_a_tiny_case_cold_and_warm(tmp_path):
    out = tmp_path / "out.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_compile.py"), "--case",
                           "lenet5:mnist_sample:16", "--precision", "fp32", "--rounds", "2", "--warm-rounds", "1",
                           "--steps", "2", "--json", str(out)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| lenet5 | mnist_sample | 16 | fp32 |" in done.stdout
    result = json.loads(out.read_text())
    assert result["threads"] == 1 and result["loadavg_start"]
    (row,) = result["rows"]
    assert row["cold"]["steps"] == 2 and len(row["cold"]["compiled_rounds_s"]) == 2
    assert row["compile_cold_s"] > row["compile_warm_s"]  # the second process finds the first one's kernels
