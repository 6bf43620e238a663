"""The decoded cache under real torchrun processes: two ranks started at once on a folder with no cache train on
one entry, built once, and the next launch maps it instead of decoding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import disk_formats as disk
from conftest import cli_env


def launch(tmp_path: Path, cache: Path, root: Path, run: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cnnlab.train",
           "data=imagefolder", f"data.root={root}", "data.input_size=[16,16]", f"data.cache_dir={cache}",
           "model=mlp", "model.hidden=[16]", "augment=none", "trainer.max_epochs=1", "trainer.progress=none",
           "trainer.summary=none", "logger=none", "data.batch_size=8", f"hydra.run.dir={tmp_path / run}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=dict(cli_env(), OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_ranks_share_one_entry_built_once_and_the_next_launch_maps_it(tmp_path):
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    disk.write_image_folder(root, per_class=12)
    launch(tmp_path, cache, root, "first")
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and not [p for p in cache.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    [entry] = entries
    built = json.loads((entry / "meta.json").read_text())["built"], (entry / "images.npy").stat().st_ino
    assert json.loads((tmp_path / "first" / "metrics.json").read_text())["epochs_completed"] == 1

    launch(tmp_path, cache, root, "second")
    assert [p for p in cache.iterdir() if p.is_dir()] == [entry]
    assert (json.loads((entry / "meta.json").read_text())["built"], (entry / "images.npy").stat().st_ino) == built
    log = (tmp_path / "second" / "train.log").read_text()
    assert "memory-mapped 36 decoded images" in log and "decoding" not in log
