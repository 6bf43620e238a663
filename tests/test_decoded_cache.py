"""The decoded cache of image folders: built once (by one process, however many start at once), memory-mapped by
later runs, rebuilt when the folder changes or the entry is damaged, bypassed with a warning when the cache dir
cannot be used, and giving exactly the pixels the per-sample path decodes. All on real image files the tests
write, and real processes."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import disk_formats as disk
from conftest import cli_env
from cnnlab.config.typed import data_section
from cnnlab.data import cache as decoded_cache
from cnnlab.data.imagefolder import find_classes, images_under, read_image, scan_listing
from cnnlab.data.sources import load_source
from cnnlab.errors import ConfigError

SMALL = ["data=imagefolder", "data.input_size=[16,16]", "data.batch_size=8", "data.num_workers=0"]


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO)
    return caplog


def _source(make_cfg, root: Path, *overrides: str):
    return load_source(data_section(make_cfg(*SMALL, f"data.root={root}", *overrides).data))


def _entries(home: Path) -> list[Path]:
    where = home / "cnnlab" / "decoded"
    return sorted(p for p in where.iterdir() if p.is_dir()) if where.is_dir() else []


def _messages(caplog, level=logging.INFO) -> str:
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= level)
    caplog.clear()
    return text


def test_a_second_run_maps_the_entry_instead_of_decoding(make_cfg, tmp_path, logs, private_cache_home):
    disk.write_image_folder(tmp_path / "imgs", per_class=10)
    first = _source(make_cfg, tmp_path / "imgs")
    text = _messages(logs)
    assert "decoding 30 images (22.5 KB at 3x16x16 uint8, checked against data.memory_limit_mb=2048)" in text
    [entry] = _entries(private_cache_home)
    assert f"into {entry} with" in text
    second = _source(make_cfg, tmp_path / "imgs")
    text = _messages(logs)
    assert "decoding" not in text
    assert f"memory-mapped 30 decoded images (22.5 KB) from {entry}; they count against the page cache" in text
    a, b = first.pools["train"], second.pools["train"]
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.dtype == torch.uint8 and a.images.shape == (30, 3, 16, 16)
    assert a.images.float().std() > 10  # real pixels, not zeros


def test_cached_pixels_are_the_per_sample_pixels(make_cfg, tmp_path):
    """Both paths share one decoding function: large JPEGs (decoded at reduced scale), odd aspect ratios,
    grey, palette, RGBA and 16-bit files, both resize modes and both channel counts."""
    root = tmp_path / "imgs"
    rng = np.random.default_rng(1)
    shapes = {"a": [(300, 200), (40, 30), (17, 16)], "b": [(16, 16), (30, 50), (9, 64)]}
    for name, sizes in shapes.items():
        (root / name).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            rgb = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
            rgb.save(root / name / f"photo_{i}.jpg", quality=85)
            rgb.convert("P").save(root / name / f"palette_{i}.png")
            rgb.convert("RGBA").save(root / name / f"alpha_{i}.png")
            Image.fromarray(rng.integers(0, 4096, size=(h, w), dtype=np.uint16)).save(root / name / f"deep_{i}.png")
    for mode in ("center_crop", "stretch"):
        for channels in (1, 3):
            pool = _source(make_cfg, root, f"data.resize_mode={mode}", f"data.in_channels={channels}",
                           "data.input_size=[16,12]").pools["train"]
            files = [f for name in ("a", "b") for f in images_under(root / name)]
            assert len(files) == len(pool) == 24
            for row, path in enumerate(files):
                assert torch.equal(pool.images[row], read_image(path, channels, (16, 12), mode)), (path, mode)


def test_a_changed_folder_is_rebuilt_and_the_stale_entry_removed(make_cfg, tmp_path, logs, private_cache_home):
    files = disk.write_image_folder(tmp_path / "imgs", per_class=8)
    _source(make_cfg, tmp_path / "imgs")
    [old] = _entries(private_cache_home)
    logs.clear()
    Image.new("RGB", (20, 24), (255, 0, 0)).save(tmp_path / "imgs" / "cat" / "new.png")      # added
    files["dog"][1].unlink()                                                                  # removed
    Image.new("RGB", (20, 24), (0, 0, 255)).save(files["fox"][0])                             # changed
    pool = _source(make_cfg, tmp_path / "imgs").pools["train"]
    warning = _messages(logs, logging.WARNING)
    assert f"the image folder {tmp_path / 'imgs'} changed since the decoded cache {old} was built " \
           "(1 added, 1 removed, 1 changed)" in warning
    [new] = _entries(private_cache_home)
    assert new != old and new.name.split("-")[0] == old.name.split("-")[0] and not old.exists()
    listed = scan_listing(tmp_path / "imgs", ["cat", "dog", "fox"], "data.root", True).files
    assert len(pool) == len(listed) == 24
    for row, path in enumerate(listed):
        assert torch.equal(pool.images[row], read_image(path, 3, (16, 16), "center_crop"))


def test_a_truncated_array_is_rebuilt_with_a_warning(make_cfg, tmp_path, logs, private_cache_home):
    disk.write_image_folder(tmp_path / "imgs", per_class=6)
    first = _source(make_cfg, tmp_path / "imgs").pools["train"].images.clone()
    [entry] = _entries(private_cache_home)
    array = entry / "images.npy"
    with open(array, "r+b") as f:
        f.truncate(array.stat().st_size - 100)
    logs.clear()
    again = _source(make_cfg, tmp_path / "imgs").pools["train"].images
    warning = _messages(logs, logging.WARNING)
    assert f"{array} is" in warning and "truncated" in warning and "rebuilding it" in warning
    assert torch.equal(again, first)
    assert array.stat().st_size == 128 + first.numel()  # the .npy header, then every pixel
    # a meta.json that is not JSON: rebuilt too, never trusted
    (entry / "meta.json").write_text("{not json")
    logs.clear()
    assert torch.equal(_source(make_cfg, tmp_path / "imgs").pools["train"].images, first)
    assert f"{entry / 'meta.json'} cannot be read" in _messages(logs, logging.WARNING)
    assert json.loads((entry / "meta.json").read_text())["shape"] == [18, 3, 16, 16]


@pytest.mark.parametrize("where", ["a regular file", "under /proc"])
def test_an_unusable_cache_dir_falls_back_to_memory_and_the_run_trains(make_cfg, tmp_path, logs, where):
    from cnnlab.run.lifecycle import train

    disk.write_image_folder(tmp_path / "imgs", per_class=8)
    disk.write_image_folder(tmp_path / "val", per_class=2, seed=1)  # a second tree: still one warning
    if where == "a regular file":
        (tmp_path / "blocker").write_text("not a folder")
        cache_dir = tmp_path / "blocker" / "cache"
    else:
        cache_dir = Path("/proc/cnnlab-cache")
    cfg = make_cfg(*SMALL, f"data.root={tmp_path / 'imgs'}", f"data.val_root={tmp_path / 'val'}",
                   f"data.cache_dir={cache_dir}", "model=convnet",
                   "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    metrics = train(cfg, overrides=[])
    assert "test/acc" in metrics
    warnings = [r.getMessage() for r in logs.records
                if r.levelno == logging.WARNING and "decoded cache" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"the decoded cache cannot be used in {cache_dir}" in warnings[0]
    assert "set data.cache_dir=<a writable folder>" in warnings[0] and "data.cache=false" in warnings[0]
    assert "decoding 24 images (18.0 KB at 3x16x16 uint8, checked against data.memory_limit_mb=2048) into " \
           "memory" in _messages(logs)
    if where == "a regular file":
        assert (tmp_path / "blocker").read_text() == "not a folder"


@pytest.mark.slow  # a process in a mount namespace with a full tmpfs (2.5 s)
def test_a_full_disk_during_the_build_leaves_no_partial_entry(tmp_path):
    """A tmpfs smaller than the decoded set, mounted in a private namespace: the build fails, its temporary
    directory is removed, and the images are decoded into memory instead."""
    from test_file_systems import _can_mount, _in_namespace

    _can_mount(tmp_path)
    disk.write_image_folder(tmp_path / "imgs", per_class=20, size=(64, 64))  # 60 x 3 x 64 x 64 = 720 KB
    small = tmp_path / "small"
    small.mkdir()
    script = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
              "from conftest import compose_cfg; from cnnlab.data.sources import load_source; "
              "from cnnlab.config.typed import data_section; "
              f"cfg = compose_cfg({str(tmp_path / 'run')!r}, 'data=imagefolder', 'data.root={tmp_path / 'imgs'}', "
              f"'data.input_size=[64,64]', 'data.cache_dir={small / 'cache'}'); "
              "pool = load_source(data_section(cfg.data)).pools['train']; print('rows', len(pool), int(pool.images.sum() > 0))")
    env_path = f"PYTHONPATH={Path(__file__).parent}:$PYTHONPATH"
    proc = subprocess.run(["unshare", "-m", "sh", "-c",
                           f"set -e; mount -t tmpfs -o size=256k tmpfs {small}; set +e; "
                           f"{env_path} {sys.executable} -c \"{script}\"; echo rc=$?; echo left:; "
                           f"ls -A {small / 'cache'}"],
                          cwd=tmp_path, env=dict(cli_env(), OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    text = proc.stdout + proc.stderr
    assert "rc=0" in text and "rows 60 1" in text, text[-3000:]
    assert f"the decoded cache cannot be used in {small / 'cache'} (No space left on device while building" in text
    left = proc.stdout.split("left:", 1)[1].split()
    assert all(name.endswith(".lock") for name in left), left  # no temporary directory, no entry


def test_an_entry_in_a_read_only_cache_dir_is_still_mapped(tmp_path, logs):
    """A cache dir shared read-only (a read-only bind mount: root ignores permission bits) serves the entries it
    holds, without the lock (which would need a write) and without a warning."""
    from test_file_systems import _can_mount

    _can_mount(tmp_path)
    disk.write_image_folder(tmp_path / "imgs", per_class=4)
    root = tmp_path / "imgs"  # the entry built here, as BUILD does in the process below
    listing = scan_listing(root, find_classes(root, "data.root"), "data.root", True)
    built = decoded_cache.load(listing, 3, (16, 16), "center_crop", decoded_cache.cache_root(None), "test")
    np.save(tmp_path / "first.npy", np.asarray(built.images))
    assert "decoding 12 images" in _messages(logs)
    where = decoded_cache.cache_root(None)
    for lock in where.glob(".*.lock"):
        lock.unlink()  # as if the entries had been copied here: nothing in the dir may need creating
    script = shlex.join([sys.executable, "-c", BUILD, str(tmp_path / "imgs"), str(tmp_path / "again.npy")])
    proc = subprocess.run(["unshare", "-m", "sh", "-c", f"set -e; mount --bind -o ro {where} {where}; "
                           f"mount -o remount,bind,ro {where}; {script}"],
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "memory-mapped 12 decoded images" in text and "decoding" not in text and "cannot" not in text, text
    assert np.array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "again.npy"))


def test_cache_dir_inside_the_data_root_is_refused(run_cli, tmp_path):
    disk.write_image_folder(tmp_path / "imgs", per_class=4)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "imgs").rglob("*"))
    done = run_cli("train", *SMALL, f"data.root={tmp_path / 'imgs'}", f"data.cache_dir={tmp_path / 'imgs' / 'c'}",
                   "trainer.progress=none", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: data.cache_dir={tmp_path / 'imgs' / 'c'} is inside the image folder data.root={tmp_path / 'imgs'}: "
        "cnnlab never writes into the data; set data.cache_dir to a folder outside it, or data.cache=false")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "imgs").rglob("*")) == before


def test_the_default_cache_dir_inside_the_data_root_is_refused_too(make_cfg, tmp_path, monkeypatch):
    disk.write_image_folder(tmp_path / "imgs", per_class=4)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "imgs" / ".cache"))
    with pytest.raises(ConfigError, match=f"data.cache_dir=null \\(the default, {tmp_path / 'imgs'}/.cache/cnnlab/"
                                          f"decoded\\) is inside the image folder data.root="):
        _source(make_cfg, tmp_path / "imgs")
    assert not (tmp_path / "imgs" / ".cache").exists()
    assert len(_source(make_cfg, tmp_path / "imgs", "data.cache=false").pools["train"]) == 12


def test_cache_false_decodes_into_memory_every_run(make_cfg, tmp_path, logs, private_cache_home):
    disk.write_image_folder(tmp_path / "imgs", per_class=4)
    for _ in range(2):
        pool = _source(make_cfg, tmp_path / "imgs", "data.cache=false").pools["train"]
        assert "decoding 12 images (9.0 KB at 3x16x16 uint8, checked against data.memory_limit_mb=2048) into " \
               "memory" in _messages(logs)
    assert _entries(private_cache_home) == [] and pool.images.float().std() > 10


@pytest.mark.parametrize("first_skip", ["false", "true"])
def test_unreadable_files_on_the_first_and_the_cached_run(make_cfg, tmp_path, logs, first_skip):
    files = disk.write_image_folder(tmp_path / "imgs", per_class=6)
    broken = [files["dog"][2], files["fox"][3]]
    for path in broken:
        path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    refused = f"data.root: cannot read image {broken[0]}: .* \\(and 1 more unreadable files\\); set " \
              "data.skip_unreadable=true"
    runs = [first_skip, "false", "true", "false"]
    for i, skip in enumerate(runs):
        logs.clear()
        if skip == "false":
            with pytest.raises(ConfigError, match=refused):
                _source(make_cfg, tmp_path / "imgs")
        else:
            data = _source(make_cfg, tmp_path / "imgs", "data.skip_unreadable=true")
            pool = data.pools["train"]
            assert data.skipped == 2 and len(pool) == 16
            readable = [f for name in ("cat", "dog", "fox") for f in images_under(tmp_path / "imgs" / name)
                        if f not in broken]
            for row, path in enumerate(readable):
                assert torch.equal(pool.rows([row])[0], read_image(path, 3, (16, 16), "center_crop"))
            assert pool.labels.tolist() == [0] * 6 + [1] * 5 + [2] * 5
        decoded = "decoding 18 images" in _messages(logs)
        assert decoded == (i == 0), (i, skip)  # later runs read the unreadable rows from the entry's meta


BUILD = r"""
import logging, sys, time
import numpy as np
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from pathlib import Path
from cnnlab.data import cache, decode_workers, imagefolder
if len(sys.argv) > 3:  # a slow builder (each image takes this long), to be killed while its workers decode
    real, pause = decode_workers.read_pixels, float(sys.argv[3])
    decode_workers.read_pixels = lambda *args: time.sleep(pause) or real(*args)
root = Path(sys.argv[1])
listing = imagefolder.scan_listing(root, imagefolder.find_classes(root, "data.root"), "data.root", True)
decoded = cache.load(listing, 3, (16, 16), "center_crop", cache.cache_root(None), "test")
np.save(sys.argv[2], np.asarray(decoded.images))
print("done", decoded.entry, flush=True)
"""


def _start(*args: str) -> tuple[subprocess.Popen, queue.Queue]:
    proc = subprocess.Popen([sys.executable, "-c", *args], env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    return proc, lines


def _wait_for(lines: queue.Queue, text: str, seen: list[str]) -> None:
    while True:
        line = lines.get(timeout=120)
        assert line is not None, "".join(seen)
        seen.append(line)
        if text in line:
            return


def _lock_path(root: Path) -> tuple[Path, Path]:
    listing = scan_listing(root, find_classes(root, "data.root"), "data.root", True)
    name = decoded_cache.entry_name(listing, 3, (16, 16), "center_crop")
    where = decoded_cache.cache_root(None)
    return where / name, where / f".{name}.lock"


@pytest.mark.slow  # two real processes racing for the lock (3 s)
def test_two_processes_started_at_once_build_the_entry_once(tmp_path):
    """Both start while the entry's lock is held (here by the test, as a builder would hold it): both wait, then
    one builds and the other maps what it built."""
    disk.write_image_folder(tmp_path / "imgs", per_class=20)
    entry, lock_path = _lock_path(tmp_path / "imgs")
    lock_path.parent.mkdir(parents=True)
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    started = [_start(BUILD, str(tmp_path / "imgs"), str(tmp_path / f"out{i}.npy")) for i in range(2)]
    outputs = [[], []]
    try:
        for (proc, lines), seen in zip(started, outputs):
            _wait_for(lines, f"waiting for another process that is building the decoded cache {entry}", seen)
    finally:
        os.close(lock)
    for (proc, lines), seen in zip(started, outputs):
        _wait_for(lines, "done", seen)
        assert proc.wait(timeout=120) == 0, "".join(seen)
    texts = ["".join(seen) for seen in outputs]
    assert sum("decoding 60 images" in t for t in texts) == 1, texts
    assert sum(f"memory-mapped 60 decoded images (45.0 KB) from {entry}" in t for t in texts) == 1, texts
    a, b = np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy")
    assert np.array_equal(a, b) and a.shape == (60, 3, 16, 16)
    files = [f for name in ("cat", "dog", "fox") for f in images_under(tmp_path / "imgs" / name)]
    assert all(np.array_equal(a[row], read_image(f, 3, (16, 16), "center_crop").numpy()) for row, f in
               enumerate(files))


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(proc.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # SIGKILL to a builder process mid-decode
def test_a_builder_killed_while_its_workers_decode_leaves_the_lock_free_and_the_waiter_builds(tmp_path):
    """SIGKILL to a builder whose worker processes are decoding (slowed down in that process only): its workers
    die with it and do not keep the lock; the waiting process takes over, clears the dead temporary directory
    and builds a complete entry."""
    disk.write_image_folder(tmp_path / "imgs", per_class=20)
    entry, _ = _lock_path(tmp_path / "imgs")
    builder, builder_lines = _start(BUILD, str(tmp_path / "imgs"), str(tmp_path / "never.npy"), "1.0")
    _wait_for(builder_lines, "decoding 60 images", [])
    waiter, lines = _start(BUILD, str(tmp_path / "imgs"), str(tmp_path / "out.npy"))
    seen: list[str] = []
    _wait_for(lines, f"waiting for another process that is building the decoded cache {entry}", seen)
    workers = _children(builder.pid)
    assert workers and (entry.parent / f".{entry.name}.tmp-{builder.pid}").is_dir()
    builder.kill()
    builder.wait(timeout=60)
    _wait_for(lines, "done", seen)
    assert waiter.wait(timeout=120) == 0, "".join(seen)
    assert "decoding 60 images" in "".join(seen)
    assert not any(_alive(pid) for pid in workers)
    assert not (entry.parent / f".{entry.name}.tmp-{builder.pid}").exists() and (entry / "meta.json").is_file()
    assert not (tmp_path / "never.npy").exists()
    out = np.load(tmp_path / "out.npy")
    files = [f for name in ("cat", "dog", "fox") for f in images_under(tmp_path / "imgs" / name)]
    assert all(np.array_equal(out[row], read_image(f, 3, (16, 16), "center_crop").numpy()) for row, f in
               enumerate(files))


def test_listing_finds_what_rglob_found_in_the_same_order(tmp_path):
    root = tmp_path / "cls"
    for rel in ["b.jpg", "a.b/c.jpg", "a/b.jpg", "a/z/Y.PNG", ".hidden.png", ".jpg", "x.jpeg.txt", "deep/1/2/3.gif",
                "name.", "U.TIFF"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "dir.jpg").mkdir()
    (root / "link.png").symlink_to(root / "b.jpg")
    (root / "broken.png").symlink_to(root / "absent.png")
    (root / "linked_dir").symlink_to(root / "a")
    expected = sorted(p for p in root.rglob("*") if p.suffix.lower() in
                      (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
                      and p.is_file())
    assert images_under(root) == expected
    assert [p.relative_to(root).as_posix() for p in expected][:4] == [".hidden.png", "U.TIFF", "a/b.jpg", "a/z/Y.PNG"]


def test_train_twice_from_the_command_line_maps_the_cache_the_second_time(run_cli, tmp_path, private_cache_home):
    disk.write_image_folder(tmp_path / "imgs", per_class=8)
    args = [*SMALL, f"data.root={tmp_path / 'imgs'}", "model=convnet", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2", "trainer.progress=none"]
    first = run_cli("train", *args, f"hydra.run.dir={tmp_path / 'run1'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("train", *args, f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    [entry] = _entries(private_cache_home)
    one, two = first.stdout + first.stderr, second.stdout + second.stderr
    assert f"decoding 24 images (18.0 KB at 3x16x16 uint8, checked against data.memory_limit_mb=2048) into {entry}" \
           in one and "memory-mapped" not in one
    assert f"memory-mapped 24 decoded images (18.0 KB) from {entry}" in two and "decoding 24" not in two
    assert "memory-mapped 24 decoded images" in (tmp_path / "run2" / "train.log").read_text()


def test_a_folder_over_the_budget_is_decoded_per_sample_and_the_log_says_why(make_cfg, tmp_path, logs,
                                                                               private_cache_home):
    disk.write_image_folder(tmp_path / "imgs", per_class=6)
    data = _source(make_cfg, tmp_path / "imgs", "data.memory_limit_mb=0.001")
    assert not data.pools["train"].resident and _entries(private_cache_home) == []
    said = _messages(logs)
    assert "18 images decode to 13.5 KB at 3x16x16 uint8, more than data.memory_limit_mb=0.001" in said
    assert "decoding" not in said


PEAK = r"""
import sys
from pathlib import Path
from cnnlab.data import cache
from cnnlab.data.imagefolder import find_classes, scan_listing

def status(key):
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(key + ":")))

root = Path(sys.argv[1])
listing = scan_listing(root, find_classes(root, "data.root"), "data.root", require_all=True)
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM starts again from the current RSS
decoded = cache.decode_in_memory(listing.files, 3, (64, 64), "center_crop", "test")
assert decoded.images.any(axis=(1, 2, 3)).all()  # every row written, and every page touched by this process
print(before, status("VmHWM"), decoded.images.nbytes // 1024)
"""


@pytest.mark.slow  # a process of its own whose peak memory is read (2.7 s)
def test_decoding_into_memory_peaks_at_the_decoded_pixels_not_twice_them(tmp_path):
    """data.cache=false (or a fallback): the peak is about one copy of the decoded set over the baseline, never
    the list of images plus their stack (2x) that decoding once held."""
    rng = np.random.default_rng(0)
    for k in range(1200):
        folder = tmp_path / "imgs" / f"c{k % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    done = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / "imgs")], env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    before, peak, pixels = (int(v) for v in done.stdout.split())
    assert pixels == 1200 * 3 * 64 * 64 // 1024
    assert peak - before <= 1.1 * pixels + 4096, (before, peak, pixels)  # KB; 4 MB for the interpreter's own
