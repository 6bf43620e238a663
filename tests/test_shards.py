"""data=webdataset and cnnlab-shards: an image folder written as tar shards (every image once, stratified splits,
the manifest), read back from disk and over HTTP, split across processes and loader workers with every sample
once, resumed mid-epoch exactly, and the errors of a bad shard set. The 2-process torchrun run is in
test_shards_distributed.py."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from commands import run_in_process
from conftest import cli_env
from runs import fit

import disk_formats as disk
from cnnlab.data import build_data
from cnnlab.data.stream import KEY_LOG
from cnnlab.engine.callbacks import Callback
from cnnlab.errors import ConfigError, TrainingStopped
from cnnlab.config.typed import data_section

CPU = torch.device("cpu")
CLASSES = ("cat", "dog", "fox")
# 3 classes x 20 images; 20% val and 20% test per class: 36 training images in 6 shards of 6, 12 val, 12 test
PER_CLASS, MAXCOUNT = 20, 6


def shards_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_in_process("shards", *args, cwd=cwd)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """An image folder and the shards cnnlab-shards wrote from it: (folder, shard dir, the command's output)."""
    base = tmp_path_factory.mktemp("shards")
    disk.write_image_folder(base / "imgs", classes=CLASSES, per_class=PER_CLASS, size=(16, 20))
    done = shards_cmd("imgs", "--out", "out", "--maxcount", str(MAXCOUNT), "--val-fraction", "0.2",
                      "--test-fraction", "0.2", "--seed", "3", cwd=base)
    assert done.returncode == 0, done.stderr
    return base / "imgs", base / "out", done


def members(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers()}


def pattern(out: Path, split: str) -> str:
    return str(out / json.loads((out / "cnnlab-shards.json").read_text())["splits"][split]["pattern"])


def stream_cfg(make_cfg, out: Path, *overrides: str, train: str | None = None, run: str = "run"):
    return make_cfg("data=webdataset", f"data.train_shards='{train or pattern(out, 'train')}'",
                    "data.input_size=[16,16]", "data.batch_size=5", "data.eval_batch_size=5", "data.num_workers=0",
                    "data.shuffle_buffer=8", *overrides, run=run)


def keys_of(log: Path) -> list[tuple[int, int, str]]:
    return [(int(r), int(e), k) for r, e, k in (line.split() for line in log.read_text().splitlines())]


def test_cnnlab_shards_writes_each_image_once_in_stratified_shard_sets_with_a_manifest(shard_dir):
    imgs, out, done = shard_dir
    manifest = json.loads((out / "cnnlab-shards.json").read_text())
    assert manifest["classes"] == list(CLASSES)
    originals = {hashlib.sha256(p.read_bytes()).hexdigest(): CLASSES.index(p.parent.name)
                 for p in imgs.rglob("img_*")}
    seen = Counter()
    for split, n in (("train", 36), ("val", 12), ("test", 12)):
        entry = manifest["splits"][split]
        assert entry["samples"] == n and entry["class_counts"] == [n // 3] * 3  # stratified
        assert sum(entry["shards"].values()) == n and max(entry["shards"].values()) <= MAXCOUNT
        for name, count in entry["shards"].items():
            files = members(out / name)
            images = {k: v for k, v in files.items() if not k.endswith(".cls")}
            assert len(images) == count and len(files) == 2 * count
            for key, data in images.items():
                digest = hashlib.sha256(data).hexdigest()  # the file's own bytes, kept as they are
                assert originals[digest] == int(files[key.rsplit(".", 1)[0] + ".cls"])
                seen[digest] += 1
            assert [int(v) for k, v in files.items() if k.endswith(".cls")].count(0) == \
                entry["shard_class_counts"][name][0]
    assert seen == Counter(dict.fromkeys(originals, 1))  # every image exactly once over the three sets
    assert len(manifest["stats"]["rgb"]["mean"]) == 3 and len(manifest["stats"]["gray"]["std"]) == 1
    assert "train: 36 images in 6 shard(s)" in done.stdout and "data.train_shards=" in done.stdout


def test_resized_shards_and_a_second_run_replaces_only_its_own_output(tmp_path):
    disk.write_image_folder(tmp_path / "imgs", per_class=4, size=(30, 40))
    assert shards_cmd("imgs", "--out", "out", "--maxcount", "5", cwd=tmp_path).returncode == 0
    assert len(list((tmp_path / "out").glob("train-*.tar"))) == 3
    mine = tmp_path / "out" / "notes.txt"
    mine.write_text("mine")
    again = shards_cmd("imgs", "--out", "out", "--maxcount", "12", "--size", "8", "8", "--quality", "80",
                       cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["train-000000.tar"]  # the 3 old ones gone
    assert mine.read_text() == "mine"
    from PIL import Image

    images = [v for k, v in members(tmp_path / "out" / "train-000000.tar").items() if k.endswith(".jpg")]
    assert len(images) == 12 and {Image.open(io.BytesIO(b)).size for b in images} == {(8, 8)}


@pytest.mark.parametrize("args,message", [
    (["--out", "foreign"], "foreign holds files and no cnnlab-shards.json"),
    (["--out", "new", "--val-fraction", "0.6", "--test-fraction", "0.5"], "--val-fraction + --test-fraction = 1.1"),
    (["--out", "new", "--maxcount", "0"], "--maxcount=0 must be a positive integer"),
])
def test_cnnlab_shards_refuses_bad_input_before_writing(tmp_path, args, message):
    disk.write_image_folder(tmp_path / "imgs", per_class=3)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.bin").write_bytes(b"x")
    done = shards_cmd("imgs", *args, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("error:") == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "new").exists() and os.listdir(tmp_path / "foreign") == ["data.bin"]


def test_an_unreadable_image_met_while_writing_leaves_no_shard_behind(tmp_path):
    """The damaged file is in the val split (the split is seeded, so it is known), which the mean/std measurement
    does not decode: the training shards are already written when it is met, and are removed again."""
    from cnnlab.data.imagefolder import list_images
    from cnnlab.data.splits import stratified_split

    disk.write_image_folder(tmp_path / "imgs", per_class=3)
    files, labels = list_images(tmp_path / "imgs", list(CLASSES), "ROOT", require_all=True)
    damaged = files[int(stratified_split(torch.tensor(labels), 0.34, 0.0, 0)["val"][0])]
    damaged.write_bytes(b"not an image")
    done = shards_cmd("imgs", "--out", "out", "--val-fraction", "0.34", "--size", "8", "8", cwd=tmp_path)
    assert done.returncode == 2 and f"cannot read image {damaged.relative_to(tmp_path)}" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()  # the training shards written before, and the folder made for them


def test_one_epoch_trains_end_to_end_on_local_shards(shard_dir, run_cli, tmp_path):
    _, out, _ = shard_dir
    done = run_cli("train", "data=webdataset", f"data.train_shards='{pattern(out, 'train')}'",
                   "data.input_size=[16,16]", "data.batch_size=8", "data.num_workers=2", "model=convnet",
                   "augment=basic", "trainer.max_epochs=1", "trainer.progress=none", "trainer.summary=none",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1 and 0 <= metrics["test/acc"] <= 1
    from omegaconf import OmegaConf

    saved = OmegaConf.load(tmp_path / "run" / "config_resolved.yaml")
    assert list(saved.data.classes) == list(CLASSES) and saved.data.num_classes == 3 and len(saved.data.mean) == 3
    assert saved.data.val_shards is None  # the manifest's val set, found beside it again by eval


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_split_the_shards_so_that_each_sample_is_trained_once(shard_dir, make_cfg, tmp_path,
                                                                                monkeypatch, workers):
    """Two ranks (built in one process: the split depends only on (rank, world)) with `workers` loader workers
    each: one epoch's training samples are every sample once, the same number on each rank; the evaluation
    sets are every sample once too, unpadded."""
    _, out, _ = shard_dir
    log = tmp_path / "keys.txt"
    monkeypatch.setenv(KEY_LOG, str(log))
    cfg = stream_cfg(make_cfg, out, f"data.num_workers={workers}", "augment=basic")
    ranks = [build_data(data_section(cfg.data), 7, CPU, cfg.augment, shard=(r, 2)) for r in (0, 1)]
    val_labels = []
    for data in ranks:
        assert len(data.train) == 4  # 18 samples per rank in batches of 5
        data.train.set_epoch(1)
        shapes = [x.shape for x, _ in data.train]
        assert sum(s[0] for s in shapes) == 18 and shapes[0][1:] == (3, 16, 16)
        val_labels += [y for _, y in data.val]
    keys = keys_of(log)
    assert Counter(r for r, _, _ in keys) == {0: 18, 1: 18}
    assert sorted(k for _, _, k in keys) == [f"train-{i:07d}" for i in range(36)]
    assert torch.cat(val_labels).bincount().tolist() == [4, 4, 4]  # 12 val images, each once over both ranks
    assert ranks[0].train.dataset_size == 36 and ranks[0].sizes == {"train": 36, "val": 12, "test": 12}


def test_uneven_shards_give_every_process_the_same_share_and_a_warning(shard_dir, make_cfg, caplog):
    """7 shards of 4 and one of 2 (30 samples) over 2 processes of 2 workers: whatever shards an epoch deals
    them, both take ceil(30 / 2) = 15 samples (padded or cut), so DDP steps together; a warning says so."""
    from cnnlab.data.shardset import Shard
    from cnnlab.data.stream import epoch_plan

    shards = [Shard(f"s{i}.tar", 4) for i in range(7)] + [Shard("s7.tar", 2)]
    for epoch in range(6):
        plans = [epoch_plan(shards, seed=0, epoch=epoch, rank=r, world=2, workers=2, train=True) for r in (0, 1)]
        assert [sum(p.quota for p in plan) for plan in plans] == [15, 15]
        dealt = sorted(s.url for plan in plans for p in plan for s in p.shards)
        assert dealt == sorted(s.url for s in shards)  # each shard to exactly one worker of one process
    evaluation = [epoch_plan(shards, seed=0, epoch=0, rank=r, world=2, workers=2, train=False) for r in (0, 1)]
    assert sum(p.quota for plan in evaluation for p in plan) == 30  # evaluation: every sample once, no padding
    _, out, _ = shard_dir
    cfg = stream_cfg(make_cfg, out, train=str(out / "train-{000000..000004}.tar"))
    build_data(data_section(cfg.data), 0, CPU, shard=(0, 2))
    assert "the processes' shares differ" in caplog.text


def test_each_epoch_reads_the_shards_in_a_new_order_that_the_seed_repeats(shard_dir, make_cfg, tmp_path, monkeypatch):
    _, out, _ = shard_dir
    cfg = stream_cfg(make_cfg, out)
    orders = []
    for seed, epoch in ((1, 0), (1, 1), (1, 0)):
        log = tmp_path / f"keys{len(orders)}.txt"
        monkeypatch.setenv(KEY_LOG, str(log))
        train = build_data(data_section(cfg.data), seed, CPU, cfg.augment).train
        train.set_epoch(epoch)
        list(train)
        orders.append([k for _, _, k in keys_of(log)])
    assert orders[0] == orders[2] and orders[0] != orders[1]
    assert sorted(orders[0]) == sorted(orders[1])


def test_a_stream_resumed_mid_epoch_yields_the_rest_of_that_epoch_unchanged(shard_dir, make_cfg):
    """The position a mid-epoch checkpoint stores rebuilds the epoch's order and skips what was trained on:
    the remaining batches equal the uninterrupted epoch's, augmentation and MixUp/CutMix draws included."""
    _, out, _ = shard_dir
    cfg = stream_cfg(make_cfg, out, "data.num_workers=2", "augment=basic", "augment/mix=mixup_cutmix")

    def epoch(stop_after=None, state=None):
        train = build_data(data_section(cfg.data), 5, CPU, cfg.augment).train
        train.set_epoch(2)
        if state is not None:
            train.resume(state)
        batches = []
        for i, batch in enumerate(train):
            batches.append(batch)
            if i + 1 == stop_after:
                return batches, train.state_dict()
        return batches, None

    full, _ = epoch()
    first, state = epoch(stop_after=3)  # 15 samples: the cut falls inside a worker's chunk
    rest, _ = epoch(state=state)
    assert state["batches"] == 3 and len(full) == 8 and len(rest) == 5
    for a, b in zip(full, first + rest, strict=True):
        for ta, tb in zip(a, b, strict=True):
            torch.testing.assert_close(ta, tb)


class StopAt(Callback):
    """SIGTERM after the `at`-th training batch of the run (counted from 1), as a scheduler's stop would send it."""

    def __init__(self, at: int):
        self.at, self.seen = at, 0

    def on_train_batch_end(self, trainer, batch, outputs, step):
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_run_stopped_mid_epoch_resumes_on_the_samples_it_had_not_trained_on(shard_dir, make_cfg, tmp_path,
                                                                              monkeypatch):
    _, out, _ = shard_dir
    common = ["model=mlp", "augment=basic", "trainer.max_epochs=2", "trainer.summary=none",
              "logger.histogram_every_n_epochs=0"]
    monkeypatch.setenv(KEY_LOG, str(tmp_path / "full.txt"))
    full, _ = fit(stream_cfg(make_cfg, out, *common, run="full"))
    monkeypatch.setenv(KEY_LOG, str(tmp_path / "parts.txt"))
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM"):
        fit(stream_cfg(make_cfg, out, *common, run="stopped"), callbacks=(StopAt(10),))  # epoch 2, batch 2 of 8
    state = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["partial"]["loader"]["batches"] == 2
    overrides = [f"trainer.resume={tmp_path / 'stopped'}"]
    resumed, _ = fit(make_cfg(*overrides, run="resumed"), overrides=overrides)
    assert keys_of(tmp_path / "parts.txt") == keys_of(tmp_path / "full.txt")  # each sample once, in the same order
    a, b = full.trainer.state_dict()["model"], resumed.trainer.state_dict()["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], msg=name)


@pytest.fixture
def http_root(shard_dir):
    """The shard dir served by a real HTTP server on 127.0.0.1: its base URL."""
    handler = functools.partial(Quiet, directory=str(shard_dir[1]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def same_batches(a, b) -> None:
    assert b.info.classes == CLASSES and b.sizes == a.sizes
    for split in ("train", "val"):
        for (xa, ya), (xb, yb) in zip(a.split(split), b.split(split), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_shards_read_over_http_give_the_same_batches_as_on_disk(shard_dir, http_root, make_cfg):
    _, out, _ = shard_dir
    local = stream_cfg(make_cfg, out, "data.num_workers=2")
    remote = stream_cfg(make_cfg, out, "data.num_workers=2", train=f"{http_root}/{Path(pattern(out, 'train')).name}")
    same_batches(build_data(data_section(local.data), 2, CPU), build_data(data_section(remote.data), 2, CPU))  # the manifest comes over HTTP too


def test_shards_read_through_a_pipe_command_give_the_same_batches_as_on_disk(shard_dir, make_cfg):
    """pipe: is how S3 and other object stores are read (pipe:aws s3 cp s3://... -); `cat` stands in here. The
    manifest is named (data.manifest, a pipe: command too), and the val/test sets are found beside it."""
    _, out, _ = shard_dir
    local = stream_cfg(make_cfg, out)
    piped = stream_cfg(make_cfg, out, f"data.manifest='pipe:cat {out / 'cnnlab-shards.json'}'",
                       train=f"pipe:cat {pattern(out, 'train')}")
    same_batches(build_data(data_section(local.data), 2, CPU), build_data(data_section(piped.data), 2, CPU))


@pytest.mark.parametrize("overrides,message", [
    (["data.train_shards='{tmp}/train-{{000000..000005}}.tar'", "data.manifest={out}/cnnlab-shards.json"],
     "6 of the 6 shards it names do not exist"),
    (["data.train_shards='{tmp}/train-{{000000..000005}}.tar'"], "{tmp}/cnnlab-shards.json: no such file"),
    (["data.num_classes=5"], "data.num_classes=5 but the manifest"),
    (["data.train_shards='{out}/other-000000.tar'"], "is not listed in the manifest"),
])
def test_a_bad_shard_set_is_one_error_line_before_training(shard_dir, run_cli, tmp_path, overrides, message):
    _, out, _ = shard_dir
    done = run_cli("train", "data=webdataset", f"data.train_shards='{pattern(out, 'train')}'", "model=mlp",
                   "data.input_size=[16,16]", *(o.format(out=out, tmp=tmp_path) for o in overrides),
                   f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1 and message.format(out=out, tmp=tmp_path) in errors[0], errors
    assert "Traceback" not in done.stderr


def test_too_few_shards_for_the_processes_and_a_missing_library_are_told_plainly(shard_dir, make_cfg, monkeypatch):
    _, out, _ = shard_dir
    cfg = stream_cfg(make_cfg, out)
    with pytest.raises(ConfigError, match=r"names 6 shard\(s\) but 8 processes train"):
        build_data(data_section(cfg.data), 0, CPU, shard=(0, 8))
    monkeypatch.setitem(sys.modules, "webdataset", None)  # as if not installed: importing it fails
    with pytest.raises(ConfigError, match=r"pip install 'cnnlab\[shards\]'"):
        build_data(data_section(cfg.data), 0, CPU)


def test_a_shard_changed_after_its_manifest_was_written_stops_the_epoch_naming_it(shard_dir, make_cfg,
                                                                                      tmp_path):
    import shutil

    _, out, _ = shard_dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = copy / "val-000000.tar"
    with tarfile.open(out / "val-000000.tar") as old, tarfile.open(shard, "w") as new:
        for member in old.getmembers()[:-4]:  # two samples fewer (an image and a .cls each)
            new.addfile(member, old.extractfile(member))
    data = build_data(data_section(stream_cfg(make_cfg, copy).data), 0, CPU)
    with pytest.raises(ConfigError, match=r"val-000000.tar as the manifest describes it: it holds 4 samples, the "
                                          r"manifest says 6"):
        list(data.val)
    shard = copy / "test-000001.tar"  # the same number of samples, one image damaged
    with tarfile.open(out / shard.name) as old, tarfile.open(shard, "w") as new:
        damaged = next(m.name for m in old.getmembers() if not m.name.endswith(".cls"))
        for member in old.getmembers():
            data = old.extractfile(member).read()
            if member.name == damaged:
                data = b"not an image"
                member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    with pytest.raises(ConfigError, match=rf"cannot read image {damaged} in shard .*test-000001.tar: cannot "
                                          rf"identify image file$"):
        list(build_data(data_section(stream_cfg(make_cfg, copy).data), 0, CPU).test)


def test_the_default_run_does_not_import_webdataset():
    code = ("import sys, cnnlab.run.lifecycle, cnnlab.data.build, cnnlab.config.schema; "
            "assert 'webdataset' not in sys.modules, 'imported'")
    assert subprocess.run([sys.executable, "-c", code], env=cli_env(), timeout=120).returncode == 0
