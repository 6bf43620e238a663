"""Files written where the user says (--out, --page, --index, output=) and files the user names as input: a
command overwrites only its own earlier output, refuses a place it cannot write with one line before any
work, writes atomically (a full disk leaves nothing partial), and names a FIFO or device given as a file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cnnlab.errors import ConfigError, RunError
from conftest import cli_env

LESSON = "optimizers"


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_error_line(text: str, status: int, returncode: int) -> str:
    """The command's output ends in exactly one `error:` line and shows no traceback; returns that line."""
    assert returncode == status, text[-3000:]
    assert "Traceback" not in text and "enforce" not in text.lower(), text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


@pytest.fixture
def run_main(capsys, caplog):
    """run_main(main, argv): a command's main() in this process -> its exit status and what it printed or
    logged (under pytest the error line goes to the log)."""

    def run(main, argv) -> tuple[int, str]:
        caplog.clear()
        try:
            main(argv)
            code = 0
        except SystemExit as stop:
            code = stop.code
        captured = capsys.readouterr()
        return code, captured.out + captured.err + "".join(f"{r.getMessage()}\n" for r in caplog.records)

    return run


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the shared run's checkpoints and metrics (commands here may write into a run dir)."""
    run_dir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def lab_result_dir(tmp_path: Path) -> Path:
    """A lab out dir as a finished quick run leaves it, without its runs (the page says "failed" for each
    arm): enough for --page-only to write a page, in a fraction of a second."""
    out = tmp_path / "lab_out"
    out.mkdir()
    (out / "lab.json").write_text(json.dumps({"lesson": LESSON, "quick": True, "overrides": [], "seconds": 1.0}))
    return out


# ---- 1. only a command's own earlier output is overwritten ----------------------------------------------------
@pytest.mark.parametrize("target", ["checkpoints/best.ckpt", "metrics.json", "metrics"])
def test_export_refuses_to_overwrite_a_file_it_did_not_write(run_copy, tmp_path, target, run_cli):
    kept = {p: digest(p) for p in (run_copy / "checkpoints" / "best.ckpt", run_copy / "metrics.json")}
    before = sorted(p.name for p in run_copy.rglob("*"))
    proc = run_cli("export", str(run_copy), "--format", "torchscript", "--out", str(run_copy / target),
                   cwd=tmp_path)
    line = one_error_line(proc.stdout + proc.stderr, 2, proc.returncode)
    assert "exists and was not written by cnnlab-export" in line and "it is left as it is" in line
    assert {p: digest(p) for p in kept} == kept  # byte for byte
    assert sorted(p.name for p in run_copy.rglob("*")) == before  # no model file, no description


def test_export_replaces_its_own_earlier_output(run_copy, tmp_path):
    from cnnlab.cli.export import export

    out = tmp_path / "model.pt"
    export(str(run_copy), "torchscript", str(out))
    (out.parent / "model.pt.json").write_text(
        json.dumps({**json.loads((out.parent / "model.pt.json").read_text()), "epoch": -1}))
    export(str(run_copy), "torchscript", str(out))  # the description names the model: its own output
    assert json.loads((out.parent / "model.pt.json").read_text())["epoch"] != -1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == ["model.pt", "model.pt.json"]


@pytest.mark.slow  # explain draws every picture twice (4 s); the other commands' own-output checks run by default
def test_explain_refuses_a_picture_it_did_not_write_and_replaces_its_own(run_copy, tmp_path, run_main):
    from cnnlab.cli.explain import main

    out = tmp_path / "pictures"
    out.mkdir()
    foreign = out / "gradcam.png"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\nsomeone else's picture")
    code, text = run_main(main, [str(run_copy), "--out", str(out), "--device", "cpu"])
    line = one_error_line(text, 2, code)
    assert f"{foreign} exists and was not written by cnnlab-explain" in line
    assert foreign.read_bytes() == b"\x89PNG\r\n\x1a\nsomeone else's picture" and len(list(out.iterdir())) == 1

    foreign.unlink()
    for _ in range(2):  # the second run replaces the first run's pictures
        code, text = run_main(main, [str(run_copy), "--out", str(out), "--device", "cpu", "--images", "2"])
        assert code == 0, text
    assert (out / "gradcam.png").is_file() and not list(out.glob(".*"))


@pytest.mark.parametrize("name", ["compare.md", "compare.csv", "curves_val_loss.png"])
def test_compare_refuses_a_file_it_did_not_write_and_replaces_its_own(trained_run, tmp_path, name, run_main):
    from cnnlab.cli.compare import main

    run_dir, _ = trained_run
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("the user's own notes\n")
    code, text = run_main(main, [str(run_dir), "--out", str(out)])
    line = one_error_line(text, 2, code)
    assert f"{out / name} exists and was not written by cnnlab-compare" in line
    assert (out / name).read_text() == "the user's own notes\n" and len(list(out.iterdir())) == 1

    (out / name).unlink()
    for _ in range(2):
        code, text = run_main(main, [str(run_dir), "--out", str(out)])
        assert code == 0, text
    assert {"compare.md", "compare.csv", "compare_seeds.csv", "curves_val_loss.png"} <= {p.name for p in out.iterdir()}


def _matplotlib_png(path: Path) -> None:
    """A PNG as cnnlab wrote them before they carried its mark (matplotlib's own Software chunk)."""
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    Figure(figsize=(1, 1)).savefig(path)


def test_compare_and_explain_recognise_their_output_from_before_the_marks(run_copy, tmp_path, run_main):
    """Re-running keeps working on folders written before outputs carried marks: compare.md by its own first
    lines (it then vouches for the files beside it), an explain picture in the command's own RUN_DIR/explain."""
    from cnnlab.cli.compare import main as compare
    from cnnlab.run.records import read_run
    from cnnlab.experiments.tables import write_summary
    from cnnlab.cli.explain import main as explain

    out = tmp_path / "compared"
    write_summary([read_run(run_copy)], out, "1 runs", prefix="compare")  # as cnnlab-compare wrote it before
    _matplotlib_png(out / "curves_val_loss.png")
    code, text = run_main(compare, [str(run_copy), "--out", str(out)])
    assert code == 0, text

    _matplotlib_png(run_copy / "explain" / "gradcam.png")
    elsewhere = tmp_path / "pictures"
    _matplotlib_png(elsewhere / "gradcam.png")
    kept = digest(elsewhere / "gradcam.png")
    code, text = run_main(explain, [str(run_copy), "--out", str(elsewhere), "--device", "cpu", "--images", "2"])
    assert "exists and was not written by cnnlab-explain" in one_error_line(text, 2, code)  # not its own folder
    assert digest(elsewhere / "gradcam.png") == kept
    code, text = run_main(explain, [str(run_copy), "--device", "cpu", "--images", "2"])
    assert code == 0, text


@pytest.mark.parametrize("foreign", [f"{LESSON}.md", f"img/{LESSON}_notes.png"])
def test_lab_page_refuses_a_file_it_did_not_write_and_replaces_its_own(tmp_path, foreign, run_main):
    from cnnlab.cli.lab import main

    out = lab_result_dir(tmp_path)
    pages = tmp_path / "pages"
    (pages / foreign).parent.mkdir(parents=True)
    (pages / foreign).write_text("mine\n")
    code, text = run_main(main, [LESSON, "--out", str(out), "--page", str(pages), "--page-only"])
    line = one_error_line(text, 2, code)
    assert f"{pages / foreign} exists and was not written by cnnlab-lab" in line
    assert (pages / foreign).read_text() == "mine\n"
    assert sorted(p.name for p in pages.rglob("*") if p.is_file()) == [Path(foreign).name]  # nothing written

    (pages / foreign).unlink()
    for _ in range(2):
        code, text = run_main(main, [LESSON, "--out", str(out), "--page", str(pages), "--page-only"])
        assert code == 0, text
    assert (pages / f"{LESSON}.md").read_text().startswith("# ")


def test_lab_page_recorded_in_the_docs_is_its_own(tmp_path, run_main):
    """The pages and images in docs/lab were written before pictures carried cnnlab's mark: a page of the
    lesson and the images beside it are recognised by the page's own lines."""
    from cnnlab.cli.lab import main

    docs = Path(__file__).resolve().parents[1] / "docs" / "lab"
    pages = tmp_path / "pages"
    (pages / "img").mkdir(parents=True)
    shutil.copy(docs / f"{LESSON}.md", pages)
    for png in (docs / "img").glob(f"{LESSON}_*.png"):
        shutil.copy(png, pages / "img")
    code, text = run_main(main, [LESSON, "--out", str(lab_result_dir(tmp_path)), "--page", str(pages),
                                 "--page-only"])
    assert code == 0, text


def test_lab_index_refuses_a_readme_it_did_not_write(tmp_path, run_main):
    from cnnlab.cli.lab import main

    readme = tmp_path / "README.md"
    readme.write_text("# My project\n")
    code, text = run_main(main, ["--index", str(tmp_path)])
    assert "exists and was not written by cnnlab-lab --index" in one_error_line(text, 2, code)
    assert readme.read_text() == "# My project\n"
    readme.unlink()
    for _ in range(2):
        code, text = run_main(main, ["--index", str(tmp_path)])
        assert code == 0, text


def test_summary_output_refuses_a_file_it_did_not_write(run_cli, tmp_path):
    from cnnlab.cli.summary import run_summary
    from conftest import compose_cfg

    notes = tmp_path / "notes.txt"
    notes.write_text("not a summary\n")
    proc = run_cli("summary", "model=lenet5", f"output={notes}", cwd=tmp_path)
    assert "exists and was not written by cnnlab-summary" in one_error_line(proc.stderr, 2, proc.returncode)
    assert notes.read_text() == "not a summary\n" and proc.stdout == ""  # refused before the summary
    out = tmp_path / "s.txt"
    for fmt in ("table", "json", "table"):  # an earlier summary, in either format, is its own
        run_summary(compose_cfg(tmp_path / "unused", "model=lenet5", f"format={fmt}", f"output={out}",
                                config_name="summary"))
        assert out.read_text().startswith("{" if fmt == "json" else "lenet5 on a 1x28x28 input")


@pytest.mark.parametrize("command", ["export", "compare"])
def test_a_fifo_where_the_output_goes_is_refused_without_waiting_on_it(run_copy, tmp_path, command, run_cli_process):
    """The file that vouches for a command's output (export's description, compare.md) is a FIFO: named, and
    never opened to see whether it is the command's own."""
    fifo = tmp_path / ("m.pt.json" if command == "export" else "compare.md")
    os.mkfifo(fifo)
    (tmp_path / ("m.pt" if command == "export" else "compare.csv")).write_text("a file it vouches for")
    args = (["export", str(run_copy), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]
            if command == "export" else ["compare", str(run_copy), "--out", str(tmp_path), "--no-plots"])
    proc = run_cli_process(*args, cwd=tmp_path, timeout=120)
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in one_error_line(proc.stderr, 2, proc.returncode)


# ---- 2. a place that cannot be written: one line, before any work ---------------------------------------------
@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_export_to_a_place_that_cannot_be_written_is_one_line(run_copy, tmp_path, where, run_cli):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker / "m.pt" if where == "under_a_file" else Path("/proc/cnnlab-test/m.pt")
    proc = run_cli("export", str(run_copy), "--format", "torchscript", "--out", str(out), cwd=tmp_path)
    line = one_error_line(proc.stdout + proc.stderr, 2, proc.returncode)
    assert line.startswith(f"error: --out={out}: ") and "choose a directory you can write to" in line
    assert blocker.read_text() == "a file"


def test_explain_and_compare_under_a_file_are_one_line(run_copy, tmp_path, run_main):
    from cnnlab.cli.compare import main as compare
    from cnnlab.cli.explain import main as explain

    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    for main, argv in ((explain, [str(run_copy), "--out", str(blocker / "x")]),
                       (compare, [str(run_copy), "--out", str(blocker / "x")])):
        code, text = run_main(main, argv)
        assert f"{blocker} is a file, not a directory" in one_error_line(text, 2, code)
    assert blocker.read_text() == "a file"


@pytest.mark.parametrize("option", ["--page", "--index"])
def test_lab_page_or_index_that_cannot_be_written_fails_before_training(tmp_path, option, run_main):
    from cnnlab.cli.lab import main

    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = tmp_path / "runs"
    argv = ([LESSON, "--quick", "--out", str(out), "--page", str(blocker / "pages")] if option == "--page"
            else ["--index", str(blocker / "pages")])
    code, text = run_main(main, argv)
    assert f"{blocker} is a file, not a directory" in one_error_line(text, 2, code)
    assert not out.exists()  # no arm trained


def _private_mount(tmp_path: Path, setup: str, command: list[str], after: str = "") -> str:
    """`command` in a private mount namespace after `setup` (mounts vanish with it), then `after`; returns
    the output, with the command's exit status as a line `rc=N`."""
    probe_dir = tmp_path / ".mount-probe"
    probe_dir.mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe_dir}"],
                           capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot mount in a private mount namespace here")
    script = f"set -e; {setup}; set +e; {shlex.join(command)}; echo rc=$?; {after}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    return proc.stdout + proc.stderr


def _status(text: str) -> int:
    return int(next(line for line in text.splitlines() if line.startswith("rc="))[3:])


@pytest.mark.slow  # a few subprocess runs: over 8 s on 2 cores
def test_explain_on_a_read_only_run_dir(run_copy, tmp_path):
    read_only = f"mount --bind {run_copy} {run_copy} && mount -o remount,ro,bind {run_copy} {run_copy}"
    explain = [sys.executable, "-m", "cnnlab.cli.explain", str(run_copy), "--device", "cpu", "--images", "2"]
    text = _private_mount(tmp_path, read_only, explain)
    line = one_error_line(text, 2, _status(text))
    assert "Read-only file system" in line or "read-only file system" in line
    assert "--out DIR" in line
    text = _private_mount(tmp_path, read_only, [*explain, "--out", str(tmp_path / "pictures")])
    assert _status(text) == 0, text[-3000:]
    assert "cannot be written: the pictures are not added to its TensorBoard files" in text
    assert (tmp_path / "pictures" / "gradcam.png").is_file()


FULL = "mount -t tmpfs -o size=1m tmpfs {d} && cp -a {seed}/. {d}/ && (dd if=/dev/zero of={d}/.filler bs=4k || true)"


# export and explain import torch and load the model in their process (several seconds on 2 cores): slow tests
# (test_a_full_disk_at_the_export_destination_in_process is export's in the default run)
@pytest.mark.parametrize("command", [pytest.param("export", marks=pytest.mark.slow),
                                     pytest.param("explain", marks=pytest.mark.slow), "compare", "lab"])
def test_a_full_disk_at_the_destination_is_one_line_and_leaves_nothing_partial(run_copy, tmp_path, command):
    """A real full file system (a tmpfs filled up) at the destination; an earlier output of the command is there."""
    full = tmp_path / "full"
    full.mkdir()
    seed = tmp_path / "seed"
    seed.mkdir()
    earlier = {"export": "m.pt", "explain": "gradcam.png", "compare": "compare.md", "lab": f"{LESSON}.md"}[command]
    from cnnlab.util.outpaths import figure_png

    if command == "export":
        (seed / "m.pt").write_bytes(b"an earlier export")
        (seed / "m.pt.json").write_text(json.dumps({"file": "m.pt", "format": "torchscript", "cnnlab_version": "0"}))
    elif command == "explain":
        from matplotlib.figure import Figure

        (seed / earlier).write_bytes(figure_png(Figure(figsize=(1, 1)), 10))
    elif command == "compare":
        from cnnlab.cli.compare import COMPARE_MARK

        (seed / earlier).write_text(f"# an earlier table\n{COMPARE_MARK}\n")
    else:
        shutil.copy(Path(__file__).resolve().parents[1] / "docs" / "lab" / f"{LESSON}.md", seed)
    before = digest(seed / earlier)
    args = {"export": ["cnnlab.cli.export", str(run_copy), "--format", "torchscript", "--out", str(full / "m.pt")],
            "explain": ["cnnlab.cli.explain", str(run_copy), "--out", str(full), "--device", "cpu", "--images", "2"],
            "compare": ["cnnlab.cli.compare", str(run_copy), "--out", str(full)],
            "lab": ["cnnlab.lab", LESSON, "--out", str(lab_result_dir(tmp_path)), "--page", str(full),
                    "--page-only"]}[command]
    after = f"sha256sum {full}/{earlier}; ls -A {full} | sed 's/^/left: /'"
    text = _private_mount(tmp_path, FULL.format(d=full, seed=seed), [sys.executable, "-m", *args], after)
    line = one_error_line(text, 1, _status(text))
    assert line.startswith(f"error: cannot write {full}/") and "the disk is full" in line, line
    assert f"{before}  {full}/{earlier}" in text  # the earlier output is byte for byte as it was
    left = {line[6:] for line in text.splitlines() if line.startswith("left: ")}
    assert not [name for name in left if name.endswith(".tmp")], left  # no temp file, nothing half-written


def test_a_full_disk_at_the_export_destination_in_process(run_copy, tmp_path, monkeypatch):
    """The same where no file system can be mounted: the write's sync reports the full disk."""
    from cnnlab.engine import checkpoint
    from cnnlab.cli.export import export

    out = tmp_path / "m.pt"
    export(str(run_copy), "torchscript", str(out))
    kept = digest(out), digest(tmp_path / "m.pt.json")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    with pytest.raises(RunError, match=rf"cannot write {out}: the disk is full"):
        export(str(run_copy), "torchscript", str(out))
    monkeypatch.undo()
    assert (digest(out), digest(tmp_path / "m.pt.json")) == kept
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == ["m.pt", "m.pt.json"]


# ---- 3. a FIFO, a device or a directory named as a file ---------------------------------------------------------
SPECIAL_FILES = """
import os, sys
from pathlib import Path
from cnnlab.errors import ConfigError
from cnnlab.engine.checkpoint import find_checkpoint, load_checkpoint
from cnnlab.data.image_input import image_files, load_image
from cnnlab.models.backbones import read_weights_file
fifo, folder = sys.argv[1], sys.argv[2]
calls = {
    "checkpoint fifo": lambda: find_checkpoint(fifo, "checkpoint"),
    "checkpoint device": lambda: find_checkpoint("/dev/zero", "ckpt"),
    "load fifo": lambda: load_checkpoint(Path(fifo)),
    "image fifo": lambda: image_files([fifo]),
    "image device": lambda: load_image(Path("/dev/zero"), 1, (28, 28)),
    "weights fifo": lambda: read_weights_file(fifo),
    "weights device": lambda: read_weights_file("/dev/zero"),
    "weights directory": lambda: read_weights_file(folder),
}
for name, call in calls.items():
    try:
        call()
        print(name, "-> accepted")
    except ConfigError as bad:
        print(name, "->", bad)
"""


def test_a_fifo_device_or_directory_named_as_a_file_is_named_as_such(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-c", SPECIAL_FILES, str(fifo), str(tmp_path)], env=cli_env(),
                          capture_output=True, text=True, timeout=120)  # a FIFO opened for reading would wait
    said = dict(line.split(" -> ", 1) for line in proc.stdout.splitlines())
    assert proc.returncode == 0 and len(said) == 8, proc.stdout + proc.stderr
    assert said["checkpoint fifo"] == f"checkpoint={fifo} is a FIFO (named pipe), not a checkpoint file or a run " \
                                      f"dir; give a .ckpt file or the run dir that holds checkpoints/"
    assert said["checkpoint device"].startswith("ckpt=/dev/zero is a device, not a checkpoint file")
    assert said["load fifo"] == f"checkpoint {fifo} is a FIFO (named pipe), not a regular file; give a file"
    assert said["image fifo"] == f"image {fifo} is a FIFO (named pipe), not an image file or a directory of them"
    assert said["image device"] == "image /dev/zero is a device, not a regular file; give a file"
    assert said["weights fifo"] == f"model.weights={fifo} is a FIFO (named pipe), not a regular file; give a file"
    assert said["weights device"] == "model.weights=/dev/zero is a device, not a regular file; give a file"
    assert said["weights directory"] == f"model.weights={tmp_path} is a directory, not a regular file; give a file"
    assert not any("no such file" in message for message in said.values())


@contextlib.contextmanager
def released_after(fifo: Path, seconds: float):
    """A command run in this process that opened `fifo` to read would wait for a writer for ever: after `seconds`
    a writer opens it and closes it again (the reader sees an empty file), so that such a test fails, not hangs."""
    def release():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader: nothing waits
            pass

    timer = threading.Timer(seconds, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.mark.parametrize("command", ["predict_checkpoint", "predict_image", "finetune"])
def test_the_commands_name_a_fifo_and_do_not_wait_on_it(trained_run, tmp_path, command, run_cli):
    run_dir, _ = trained_run
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    args = {"predict_checkpoint": ["predict", str(fifo), str(fifo)],
            "predict_image": ["predict", str(run_dir), str(fifo)],
            "finetune": ["train", f"finetune.checkpoint={fifo}", f"hydra.run.dir={tmp_path / 'run'}"]}[command]
    with released_after(fifo, 60):
        proc = run_cli(*args, cwd=tmp_path)
    line = one_error_line(proc.stdout + proc.stderr, 2, proc.returncode)
    assert f"{fifo} is a FIFO (named pipe)" in line


# ---- 4. why a run's metrics.json is of no use -----------------------------------------------------------------
@pytest.mark.parametrize("content, reason", [("{\"test/acc\": 0.9,", "metrics.json is not JSON: Expecting"),
                                             ("[0.9]", "metrics.json is not a JSON mapping (it holds a list)")])
def test_compare_says_why_a_runs_metrics_are_unusable(trained_run, tmp_path, content, reason, run_main):
    from cnnlab.cli.compare import main

    run_dir, _ = trained_run
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "metrics.json").write_text(content)
    code, text = run_main(main, [str(run_dir), str(broken), "--out", str(tmp_path / "out"), "--no-plots"])
    assert code in (0, None), text
    row = next(line for line in text.splitlines() if "incomplete" in line)
    assert reason in row, text
    assert reason in (tmp_path / "out" / "compare.csv").read_text()


def test_compare_names_a_fifo_or_file_given_as_a_path(tmp_path):
    from cnnlab.experiments.collect import expand

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"PATH .*pipe is a FIFO \(named pipe\), not a directory; give a run dir"):
        expand(fifo, "PATH")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(ConfigError, match=r"PATH .*notes.txt is a file, not a directory"):
        expand(notes, "PATH")
