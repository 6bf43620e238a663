"""scripts/precision_parity.py, whose table in docs/benchmarks.md decides where bf16 is the default: its verdict
rule, its table, and one tiny case run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, cli_env

sys.path.insert(0, str(REPO / "scripts"))
import precision_parity as parity  # noqa: E402


def test_a_difference_inside_twice_its_standard_error_or_half_a_point_holds():
    assert parity.verdict([0.90, 0.92, 0.94], [0.91, 0.93, 0.95])[2] == "holds"      # +0.01, se 0.0163
    assert parity.verdict([0.988, 0.988, 0.988], [0.985, 0.985, 0.985])[2] == "holds"  # stds 0: the 0.005 floor
    difference, bound, says = parity.verdict([0.90, 0.901, 0.902], [0.85, 0.851, 0.852])
    assert says == "differs" and difference == pytest.approx(-0.05) and bound == parity.NOISE_FLOOR


def test_the_table_reads_the_runs_of_each_precision():
    run = {"test_acc": 0.9, "train_loss": 0.25, "img_s": 100.0}
    results = {"resnet20": {str(s): {"32": run, "bf16": {**run, "img_s": 150.0, "test_acc": 0.9 + s / 100}}
                            for s in range(3)}}
    row = parity.table(results).splitlines()[2]
    assert row.startswith("| resnet20 | shapes | pad-4 crop + flip, 6 epochs | 0.9000 ± 0.0000 | 0.9100 ± 0.0100 |")
    assert "| +0.0100 (0.0115) |" in row and "| 100 / 150 (1.50x) | **holds** |" in row


@pytest.mark.slow
def test_one_tiny_case_runs_both_precisions_and_writes_its_record(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "precision_parity.py"), "--seeds", "0",
                          "--cases", "lenet5", "--override", "trainer.max_epochs=1", "--override",
                          "trainer.limit_train_batches=2", "--json", str(tmp_path / "p.json"), "--out",
                          str(tmp_path / "runs")], capture_output=True, text=True, env=cli_env(), check=True)
    record = json.loads((tmp_path / "p.json").read_text())
    runs = record["results"]["lenet5"]["0"]
    assert runs["32"]["precision"] == "32" and runs["bf16"]["precision"] == "bf16"
    assert runs["32"]["epochs"] == 1 and runs["bf16"]["img_s"] > 0
    assert out.stdout.splitlines()[2].startswith("| lenet5 | mnist_sample |")
