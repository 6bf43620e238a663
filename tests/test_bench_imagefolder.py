"""The helpers of scripts/bench_imagefolder.py: the generated image folders, the process-tree memory sampler,
the split sizes both sides of the benchmark use, and the step timing read from real runs of both sides."""

from __future__ import annotations

import hashlib
import importlib.util
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import REPO, cli_env

pytestmark = pytest.mark.slow  # a benchmark's parts and real runs of both its sides


sys.path.insert(0, str(REPO / "scripts"))  # the scripts import their shared helpers from scripts/_bench.py


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load("bench_imagefolder")
plain = _load("plain_imagefolder")
MIB = 1024 * 1024


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.jpg")}


def test_generated_folder_is_an_image_folder_the_same_from_the_seed_and_reused(tmp_path: Path):
    folder = bench.generate_folder(tmp_path / "a", 24, classes=4, size=16, seed=3, workers=2, chunk=5, quiet=True)
    data = torchvision.datasets.ImageFolder(str(folder))
    assert data.classes == [f"class_{c:03d}" for c in range(4)]
    assert len(data) == 24 and [data.targets.count(c) for c in range(4)] == [6, 6, 6, 6]
    image, label = data[6]  # class_001/0000001.jpg
    assert image.size == (16, 16) and image.mode == "RGB" and label == 1
    assert torchvision.transforms.v2.functional.pil_to_tensor(image).float().std() > 10  # content, not a flat colour

    # the same seed gives the same files, in parallel or not; another seed other ones
    serial = bench.generate_folder(tmp_path / "b", 24, classes=4, size=16, seed=3, workers=1, quiet=True)
    assert _digests(serial) == _digests(folder)
    other = bench.generate_folder(tmp_path / "c", 24, classes=4, size=16, seed=4, workers=1, quiet=True)
    assert set(_digests(other).values()).isdisjoint(_digests(folder).values())

    # a finished folder is reused as it is; one without its marker (an interrupted call) is written again
    stamp = (folder / "class_001" / "0000005.jpg").stat().st_mtime_ns
    (folder / "class_000" / "stray.jpg").write_bytes(b"")
    assert bench.generate_folder(tmp_path / "a", 24, classes=4, size=16, seed=3, quiet=True) == folder
    assert (folder / "class_000" / "stray.jpg").exists()
    folder.with_suffix(".json").unlink()
    bench.generate_folder(tmp_path / "a", 24, classes=4, size=16, seed=3, workers=1, quiet=True)
    assert not (folder / "class_000" / "stray.jpg").exists() and _digests(folder) == _digests(serial)
    assert (folder / "class_001" / "0000005.jpg").stat().st_mtime_ns != stamp


@pytest.mark.parametrize("images", [2000, 2050, 20000])
def test_split_sizes_are_cnnlabs_and_the_plain_scripts(images: int):
    from cnnlab.data.splits import stratified_split

    labels = [i % 100 for i in range(images)]
    cnnlab_split = stratified_split(torch.tensor(labels), 0.1, 0.1, seed=42)
    plain_split = plain.stratified_split(labels, 0.1, 0.1, seed=42)
    expected = bench.split_sizes(images, 100)
    assert {k: len(v) for k, v in cnnlab_split.items()} == expected
    assert dict(zip(("train", "val", "test"), map(len, plain_split))) == expected


CHILD = """
import mmap, subprocess, sys, time
anon = b"x" * (48 << 20)                      # 48 MiB of this process's own pages
with open(sys.argv[1], "rb") as f:            # 32 MiB of a file, mapped and read: page-cache pages
    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    sum(mapped[i] for i in range(0, len(mapped), 4096))
grandchild = subprocess.Popen([sys.executable, "-c", "import time; a = b'y' * (64 << 20); time.sleep(1.5)"])
grandchild.wait()
"""


def test_tree_memory_sums_every_descendant_and_tells_mapped_files_apart(tmp_path: Path):
    data = tmp_path / "mapped.bin"
    data.write_bytes(bytes(range(256)) * (32 * MIB // 256))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data)])
    sampler = bench.TreeMemory(child.pid, interval=0.05, pss_interval=0.3).start()
    assert child.wait(timeout=30) == 0
    memory = sampler.stop()
    assert memory["processes"] == 2 and memory["samples"] > 10
    assert memory["anon"] >= 48 + 64 and memory["peak_anon"] >= memory["anon"]  # both processes' own pages
    assert memory["file"] >= 32  # the mapped file counts as file pages, apart from RssAnon
    assert memory["peak"] >= memory["anon"] + memory["file"] - 1  # VmRSS = anon + file + shmem
    assert 48 <= memory["main"] < memory["peak"]
    assert memory["pss"] is not None and 48 + 64 <= memory["pss"] <= memory["peak"] + 1


def test_step_lines_of_both_sides_are_timed(tmp_path: Path):
    folder = bench.generate_folder(tmp_path / "data", 40, classes=4, size=16, workers=1, quiet=True)
    env = dict(cli_env(), OMP_NUM_THREADS="1")
    train = bench.split_sizes(40, 4)["train"]
    assert train == 32
    cnnlab_cmd = [sys.executable, "-m", "cnnlab.train", "data=imagefolder", f"data.root={folder}", "model=lenet5",
                  "data.input_size=[16,16]", "data.batch_size=8", "trainer.max_epochs=1",
                  "trainer.limit_train_batches=3", "trainer.progress=plain", "trainer.log_every_n_steps=1",
                  "logger=none", "trainer.summary=none", f"paths.output_root={tmp_path / 'runs'}"]
    plain_cmd = [sys.executable, str(REPO / "scripts" / "plain_imagefolder.py"), str(folder), "--steps", "3",
                 "--size", "16", "16", "--batch-size", "8", "--workers", "0", "--warmup-steps", "1"]
    for cmd in (cnnlab_cmd, plain_cmd):
        start = time.perf_counter()
        run = bench.measure(cmd, "test", env=env, train_images=train, warmup=1, interval=0.05, batch=8)
        assert run.steps == 3, run.lines[-10:]
        assert 0 < run.first_step < run.wall <= time.perf_counter() - start
        assert math.isfinite(run.img_s) and run.img_s > 0
        assert run.memory["peak"] > 50 and run.memory["processes"] >= 1
