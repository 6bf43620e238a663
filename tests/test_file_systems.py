"""Every command that writes, on a read-only file system and on a full one: one `error:` line naming the path,
no traceback, a non-zero exit status (2 when found before any work), and nothing the user had is changed.

The read-only file system is a read-only bind mount in a private mount namespace (`unshare -m`; root writes
through permission bits, so `chmod` would not do); the full one is a tmpfs filled up in such a namespace, or,
where nothing can be mounted, writes under the output root failing with ENOSPC (the FULL_DISK harness)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env, compose_cfg
from test_output_paths import FULL, one_error_line
from test_run_dir_ownership import FULL_DISK

TINY = ["model=lenet5", "data=digits", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.progress=none", "trainer.summary=none",
        "logger.histogram_every_n_epochs=0"]
TUNE = [*TINY, "search.n_trials=1", "search.overrides=[]"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny trained run (read by eval, compare, export and explain; copied where a command writes into it)."""
    from cnnlab.run.lifecycle import train

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    train(compose_cfg(run_dir, *TINY), overrides=[])
    return run_dir


def _can_mount(tmp_path: Path) -> None:
    probe_dir = tmp_path / ".mount-probe"
    probe_dir.mkdir(exist_ok=True)
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: cannot make a private mount namespace")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {probe_dir} {probe_dir}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot bind-mount in a private mount namespace here: {probe.stderr.strip()[-200:]}")


def _in_namespace(tmp_path: Path, setup: str, args: list[str], after: str = "") -> tuple[int, str]:
    script = f"set -e; {setup}; set +e; {shlex.join([sys.executable, '-m', *args])}; echo rc=$?; {after}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path,
                          env=dict(cli_env(), OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    status = [line for line in text.splitlines() if line.startswith("rc=")]
    assert status, text[-3000:]
    return int(status[-1][3:]), text


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


# command -> (arguments given the read-only dir L, the tiny run R and a writable dir W; the path the line names)
READ_ONLY = {
    "train run dir": (lambda L, R, W: ["cnnlab.cli.train", *TINY, f"hydra.run.dir={L}/run"], "{L}/run"),
    "train output root": (lambda L, R, W: ["cnnlab.cli.train", *TINY, f"paths.output_root={L}/outputs"], "{L}/outputs"),
    "eval": (lambda L, R, W: ["cnnlab.cli.evaluate", f"ckpt={R}", "trainer.progress=none",
                              f"paths.output_root={L}"], "{L}"),
    "doctor": (lambda L, R, W: ["cnnlab.cli.doctor", *TINY, f"paths.output_root={L}"], "{L}"),
    "tune": (lambda L, R, W: ["cnnlab.cli.tune", *TUNE, f"hydra.run.dir={L}/study"], "{L}/study"),
    "compare": (lambda L, R, W: ["cnnlab.cli.compare", str(R), "--out", f"{L}/tables"], "{L}/tables"),
    "export": (lambda L, R, W: ["cnnlab.cli.export", str(R), "--format", "torchscript", "--out", f"{L}/m.pt"],
               "{L}/m.pt"),
    "explain out": (lambda L, R, W: ["cnnlab.cli.explain", str(R), "--device", "cpu", "--images", "2",
                                     "--out", f"{L}/pictures"], "{L}/pictures"),
    "explain run dir": (lambda L, R, W: ["cnnlab.cli.explain", f"{L}/run", "--device", "cpu", "--images", "2"],
                        "{L}/run"),
    "lab out": (lambda L, R, W: ["cnnlab.lab", "losses", "--quick", "--out", f"{L}/lab"], "{L}/lab"),
    "lab page": (lambda L, R, W: ["cnnlab.lab", "losses", "--quick", "--out", f"{W}/lab", "--page", f"{L}/page"],
                 "{L}/page"),
    "lab index": (lambda L, R, W: ["cnnlab.lab", "--index", f"{L}/docs"], "{L}/docs"),
    "summary": (lambda L, R, W: ["cnnlab.cli.summary", "model=lenet5", f"output={L}/summary.txt"], "{L}/summary.txt"),
}


@pytest.mark.slow  # a real mount (read-only, or a full tmpfs) and a command process per case
@pytest.mark.parametrize("case", list(READ_ONLY))
def test_a_read_only_destination_is_one_error_line_and_nothing_changes(case, tiny_run, tmp_path):
    _can_mount(tmp_path)
    locked, writable = tmp_path / "locked", tmp_path / "writable"
    (locked / "earlier").mkdir(parents=True)
    (locked / "earlier" / "notes.txt").write_text("kept")
    writable.mkdir()
    if case == "explain run dir":
        shutil.copytree(tiny_run, locked / "run")
    before = _snapshot(locked)
    make_args, named = READ_ONLY[case]
    read_only = f"mount --bind {locked} {locked} && mount -o remount,ro,bind {locked} {locked}"
    status, text = _in_namespace(tmp_path, read_only, make_args(locked, tiny_run, writable))
    line = one_error_line(text, 2, status)
    assert named.format(L=locked) in line, line
    assert "read-only" in line.lower() or "cannot be written" in line, line
    assert _snapshot(locked) == before
    if case == "lab page":
        assert not (writable / "lab").exists()  # refused before any arm trained


# ---- full file systems: the commands the other full-disk tests leave out -------------------------------------
FULL_CASES = {
    "train": (lambda d: ["cnnlab.cli.train", *TINY, f"hydra.run.dir={d}/a/run"], "{d}/a/run"),
    "tune": (lambda d: ["cnnlab.cli.tune", *TUNE, f"hydra.run.dir={d}/study"], "{d}/study"),
    "tune output root": (lambda d: ["cnnlab.cli.tune", *TUNE, f"paths.output_root={d}"], "{d}"),
    "summary": (lambda d: ["cnnlab.cli.summary", "model=lenet5", f"output={d}/summary.txt"], "{d}/summary.txt"),
    "lab index": (lambda d: ["cnnlab.lab", "--index", f"{d}/docs"], "{d}/docs"),
    "lab page": (lambda d: ["cnnlab.lab", "losses", "--quick", "--out", "runs", "--page", f"{d}/page"], "{d}/page"),
}


# found by the start-up probe (2), or by the write itself, the only work there is (1)
FULL_STATUS = {"train": 2, "tune": 2, "tune output root": 2, "summary": 1, "lab index": 1, "lab page": 2}


@pytest.mark.slow  # a real mount (read-only, or a full tmpfs) and a command process per case
@pytest.mark.parametrize("case", list(FULL_CASES))
def test_a_real_full_file_system_is_one_error_line_and_nothing_is_lost(case, tmp_path):
    """A tmpfs filled up, with a file of the user's in it."""
    _can_mount(tmp_path)
    full, seed = tmp_path / "full", tmp_path / "seed"
    full.mkdir()
    seed.mkdir()
    (seed / "earlier.txt").write_text("kept")
    make_args, named = FULL_CASES[case]
    after = f"cat {full}/earlier.txt; echo; ls -A {full} | sed 's/^/left: /'"
    status, text = _in_namespace(tmp_path, FULL.format(d=full, seed=seed), make_args(full), after)
    line = one_error_line(text, FULL_STATUS[case], status)
    assert named.format(d=full) in line and "the disk is full" in line, line
    assert "\nkept\n" in text
    left = {line[6:] for line in text.splitlines() if line.startswith("left: ")}
    assert left == {"earlier.txt", ".filler"}, left
    assert not (tmp_path / "runs").exists()  # lab: refused before any arm trained


# FULL_DISK, with the sync of a file under the root failing too (a write through a file object made by os.fdopen,
# as the atomic writes make, is not seen by the harness's os.write)
FULL_DISK_SYNC = FULL_DISK.replace("runpy.run_module", "os.fsync = fails_under_root(os.fsync)\nrunpy.run_module")


@pytest.mark.parametrize("case", ["tune", pytest.param("summary", marks=pytest.mark.slow)])  # summary: 3.5 s
def test_a_full_output_root_without_mounting(case, tmp_path):
    """The same where nothing can be mounted: every write under the root fails with ENOSPC (FULL_DISK)."""
    root = tmp_path / "outputs"
    (root / "earlier").mkdir(parents=True)
    (root / "earlier" / "notes.txt").write_text("kept")
    args = {"tune": ["cnnlab.cli.tune", *TUNE, "paths.output_root=outputs"],
            "summary": ["cnnlab.cli.summary", "model=lenet5", f"output={root}/summary.txt"]}[case]
    done = subprocess.run([sys.executable, "-c", FULL_DISK_SYNC, str(root), *args], cwd=tmp_path,
                          env=dict(cli_env(), OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-3000:]
    line = one_error_line(text, done.returncode, done.returncode)
    assert "the disk is full" in line and "outputs" in line, line
    assert [p.relative_to(root).as_posix() for p in sorted(root.rglob("*"))] == ["earlier", "earlier/notes.txt"]
    assert (root / "earlier" / "notes.txt").read_text() == "kept"
