"""scripts/bench_precision.py, whose table is in docs/benchmarks.md: both sides train the same model on the same
batches, bf16 under autocast with fp32 weights, and the MACs column is the inspector's count."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their shared helpers from scripts/


@pytest.mark.slow
def test_both_sides_train_lenet_and_the_template_stays_untouched():
    import bench_precision

    model, batches, batch_size = bench_precision.build("lenet5", "mnist_sample", 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bf16 in (True, False):
        assert bench_precision.train_round(model, batches, bf16) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # each round trains a copy
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert bench_precision.macs_per_sample(model, batches) == 416_520  # LeNet-5's count in its model summary
    assert batch_size == len(batches[0][1])


@pytest.mark.slow
def test_the_script_prints_a_row_with_what_auto_picks(tmp_path):
    import subprocess

    from conftest import cli_env

    out = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_precision.py"), "--rounds", "2", "--steps", "1",
                          "--case", "lenet5:mnist_sample"], capture_output=True, text=True, env=cli_env(), check=True)
    row = next(line for line in out.stdout.splitlines() if line.startswith("| lenet5 |"))
    assert row.endswith("| fp32 |")  # 0.4 M MACs: too small for auto's bf16 on any device
    assert "native bf16: " in out.stdout
