"""scripts/bench_gpu.py, the GPU readiness benchmark in docs/benchmarks.md, run at its tiny CPU size."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env

pytestmark = pytest.mark.slow  # a benchmark, at its tiny size

PRECISIONS = ("fp32", "fp16", "bf16")


def test_tiny_cpu_run_reports_every_model_precision_and_loader(tmp_path: Path):
    out = tmp_path / "bench.json"
    # One layout and batch 8: fp16 autocast on CPU takes ~0.7 s a step of 16 images, most of the test's time.
    command = [sys.executable, str(REPO / "scripts" / "bench_gpu.py"), "--tiny", "--device", "cpu",
               "--channels-last", "on", "--batch-size", "8", "--json", str(out)]
    env = dict(cli_env(), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["settings"]["models"] == ["resnet20"] and result["environment"]["device"] == "cpu"

    rows = {(r["model"], r["precision"], r["layout"], r["loader"]): r for r in result["rows"]}
    assert set(rows) == {("resnet20", p, "NHWC", loader) for p in PRECISIONS for loader in ("tensor", "dataloader")}
    for key, row in rows.items():
        if key[1] == "fp16" and row["status"] == "n/a":  # allowed on CPU, but only with the reason
            assert row["reason"]
            continue
        assert row["status"] == "ok", row
        assert math.isfinite(row["img_s"]) and row["img_s"] > 0, row
        assert math.isfinite(row["ms_per_step"]) and row["ms_per_step"] > 0, row
        assert math.isfinite(row["final_loss"]), row
    # The script's own choice today: torch runs fp16 autocast on CPU, so it is measured, with a note saying
    # cnnlab's trainer would refuse it.
    assert rows[("resnet20", "fp16", "NHWC", "tensor")]["status"] == "ok"
    assert "refuses" in rows[("resnet20", "fp16", "NHWC", "tensor")]["note"]

    ratios = {(r["model"], r["precision"]): r["ratio"] for r in result["ratios"]}
    assert set(ratios) == {("resnet20", p) for p in PRECISIONS}
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())
    assert "| resnet20 | bf16 | NHWC | dataloader |" in done.stdout
    assert "resnet20: tensor/DataLoader" in done.stdout


def test_precision_probe_presets_and_resnet18_without_training(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # its shared helpers (_bench), as running the script finds them
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "scripts" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import torch

    assert bench.precision_problem("fp32", torch.device("cpu")) is None
    assert bench.precision_problem("bf16", torch.device("cpu")) is None  # CPU autocast in bfloat16
    tiny = bench.parse_args(["--tiny", "--models", "resnet18,resnet20", "--steps", "3"])
    assert (tiny.batch_size, tiny.n_train, tiny.warmup, tiny.workers) == (16, 64, 1, 0)
    assert tiny.models == ["resnet18", "resnet20"] and tiny.steps == 3  # explicit options beat the preset
    full = bench.parse_args([])
    assert (full.batch_size, full.n_train, full.steps, full.workers) == (512, 50_000, 50, None)
    # resnet18, too slow to train in a test, builds through the zoo for CIFAR-sized inputs and runs
    model = bench.build_model(bench.compose("resnet18", 32, 10), seed=0)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
