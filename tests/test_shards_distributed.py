"""data=webdataset under a real 2-process torchrun (gloo, CPU): each process streams its own shards, and one
epoch trains on every training sample exactly once over both, in the same number of steps."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import disk_formats as disk
import pytest
from conftest import cli_env

from cnnlab.data.stream import KEY_LOG


@pytest.mark.slow  # two torchrun processes start and train: ~17 s
def test_two_processes_train_on_every_sample_once_per_epoch(tmp_path):
    disk.write_image_folder(tmp_path / "imgs", per_class=12, size=(16, 16))  # 36 images: 30 train in 6 shards of 5
    env = dict(cli_env(), OMP_NUM_THREADS="1", **{KEY_LOG: str(tmp_path / "keys.txt")})
    wrote = subprocess.run([sys.executable, "-m", "cnnlab.cli.shards", "imgs", "--out", "shards", "--maxcount", "5",
                            "--val-fraction", "0.12", "--test-fraction", "0.12"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert wrote.returncode == 0, wrote.stderr
    manifest = json.loads((tmp_path / "shards" / "cnnlab-shards.json").read_text())
    train = manifest["splits"]["train"]
    assert train["samples"] == 30 and set(train["shards"].values()) == {5}  # equal shards, 3 per process

    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "cnnlab.train", "data=webdataset",
                          f"data.train_shards='{tmp_path / 'shards' / train['pattern']}'", "data.input_size=[16,16]",
                          "data.batch_size=4", "data.num_workers=1", "model=mlp", "augment=none",
                          "trainer.max_epochs=1", "trainer.progress=none", "trainer.summary=none",
                          "logger.histogram_every_n_epochs=0", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [line.split() for line in (tmp_path / "keys.txt").read_text().splitlines()]
    per_rank = Counter(rank for rank, _, _ in lines)
    assert per_rank == {"0": 15, "1": 15}  # ceil(30 / 2) each: the same number of steps
    keys = Counter(key for _, _, key in lines)
    assert sorted(keys) == [f"train-{i:07d}" for i in range(30)] and set(keys.values()) == {1}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_completed"] == 1
