"""The Python API (cnnlab.train, cnnlab.load, Run), used as a notebook uses it: in this process, one run after
another, after errors and after a Ctrl-C. Each run is tiny (one epoch of 5 batches of the MNIST sample)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cnnlab
from cnnlab.errors import ConfigError, TrainingInterrupted
from commands import run_in_process

TINY = ("trainer.max_epochs=1", "trainer.limit_train_batches=5")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished run (no TensorBoard), shared by the tests that only read it or use its model."""
    return cnnlab.train(*TINY, logger="none", dir=tmp_path_factory.mktemp("api") / "run")


def held() -> dict:
    """What a run could leave behind in the process: logging handlers, threads, open files, Hydra's state."""
    import gc

    import torch
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    gc.collect()  # a file an earlier test left to the collector is closed now, not during the runs measured
    return {"root handlers": list(logging.getLogger().handlers),
            "cnnlab handlers": list(logging.getLogger("cnnlab").handlers),
            "threads": threading.active_count(), "open fds": len(os.listdir("/proc/self/fd")),
            "hydra initialised": GlobalHydra.instance().is_initialized(), "hydra config": HydraConfig.initialized(),
            "SIGINT handler": signal.getsignal(signal.SIGINT), "argv": list(sys.argv),
            "frozen objects": gc.get_freeze_count(),  # the run's objects stay collectable
            "torch flags": (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                            torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())}


def test_train_writes_the_commands_run_dir_and_returns_the_run(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = cnnlab.train(*TINY, "optimizer=sgd", logger="none", lr=0.05)
    # the command's default run dir, under outputs/ of the working directory
    assert run.dir.parent.parent == tmp_path / "outputs" and run.dir.name.endswith(f"_{os.getpid()}")
    for name in (".cnnlab-run.json", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "train.log",
                 "metrics.json", "metrics.csv", "config_resolved.yaml", "checkpoints/best.ckpt"):
        assert (run.dir / name).exists(), name
    assert (run.dir / ".hydra/overrides.yaml").read_text().split() == [
        "-", "trainer.max_epochs=1", "-", "trainer.limit_train_batches=5", "-", "optimizer=sgd", "-", "logger=none",
        "-", "optimizer.lr=0.05"]
    log = (run.dir / "train.log").read_text()
    shown = capsys.readouterr().out  # the console's lines, as the command prints them
    for line in ("epoch 1/1  train/loss", "test/acc", f"run dir: {run.dir}"):
        assert line in log and line in shown
    assert run.metrics == json.loads((run.dir / "metrics.json").read_text())
    assert run.config.optimizer.lr == 0.05 and run.config.model.name == "lenet5"
    assert run.status == "finished" and cnnlab.load(run.dir) == run

    compared = cnnlab.compare([run, trained.dir])  # what differs (the optimizer), then the metrics
    table = compared.table
    assert len(table) == 2 and set(table["optimizer._target_"]) == {"torch.optim.SGD", "torch.optim.AdamW"}
    assert set(table["test/acc"]) == {run.metrics["test/acc"], trained.metrics["test/acc"]}
    assert "optimizer.lr" in compared._repr_markdown_() and "<table" in compared._repr_html_()
    assert len(compared.plot().axes[0].get_lines()) == 2

    history = trained.history
    assert list(history["epoch"]) == [1] and history["val/acc"][0] == trained.metrics["val/acc_best"]
    monkeypatch.setitem(sys.modules, "pandas", None)  # without pandas: a list of dicts
    assert trained.history[0]["epoch"] == 1
    fig = trained.plot()
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "acc"]
    assert fig._repr_png_().startswith(b"\x89PNG")  # inline in a notebook, pyplot imported or not
    assert "parameters" in trained.summary()
    for shown in (trained._repr_html_(), trained._repr_markdown_()):
        assert str(trained.dir) in shown and "lenet5" in shown and "mnist_sample" in shown
        assert f"{trained.metrics['test/acc']:.4f}" in shown and "1/1" in shown


def test_the_api_names_and_the_forwarding_module(tmp_path):
    """`import cnnlab` stays light; `cnnlab.train` is the API's function, and still callable once the forwarding
    module cnnlab/train.py (`python -m cnnlab.train`) is imported and Python binds that name to it."""
    check = ("import sys, cnnlab; assert not {'torch', 'hydra', 'cnnlab.api'} & set(sys.modules), sys.modules.keys(); "
             "from cnnlab.api import train; assert cnnlab.train is train and cnnlab.load and cnnlab.Run")
    env = {**os.environ, "PYTHONPATH": str(Path(cnnlab.__file__).parents[1])}
    subprocess.run([sys.executable, "-c", check], check=True, env=env, timeout=120)
    command = subprocess.run([sys.executable, "-m", "cnnlab.train", "trainer.max_epochz=1"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert command.returncode == 2 and "trainer.max_epochz" in command.stderr

    import cnnlab.train as forwarding

    assert cnnlab.train is forwarding and callable(forwarding)
    with pytest.raises(ConfigError, match="trainer.max_epochz"):
        cnnlab.train("trainer.max_epochz=1", dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(TypeError, match="max_epochz"):
        cnnlab.train(max_epochz=1)


def test_a_config_error_is_the_commands_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = run_in_process("train", "optimizer.lr=-1", cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"^optimizer.lr=-1 must be > 0$") as bad:
        cnnlab.train("optimizer.lr=-1")
    assert command.stderr.strip() == f"error: {bad.value}"
    with pytest.raises(ConfigError, match="Could not find 'model/nonexistent'"):  # Hydra's own refusal, no traceback
        cnnlab.train("model=nonexistent")
    assert not list((tmp_path / "outputs").glob("*/*"))  # no run dir (the command too creates only outputs/)


def test_runs_after_runs_and_errors_leave_nothing_behind(tmp_path, monkeypatch):
    """Two runs (one with TensorBoard), two failed ones and one interrupted at start-up release what they took: logging handlers, TensorBoard
    writers and their threads, open files, Hydra's global state, frozen objects, torch's process-wide flags."""
    monkeypatch.chdir(tmp_path)
    before = held()
    first = cnnlab.train(*TINY)  # TensorBoard: its writer thread and event file
    second = cnnlab.train(*TINY, "trainer.deterministic=true", logger="none")  # sets torch's global flags
    assert first.dir != second.dir and list(first.dir.glob("events.out.tfevents.*"))
    with pytest.raises(ConfigError, match="no such file"):  # refused inside the Hydra job, after the run dir exists
        cnnlab.train(*TINY, "trainer.resume=/nonexistent", logger="none")
    with pytest.raises(ConfigError, match="must be > 0"):
        cnnlab.train(*TINY, "optimizer.lr=-1")
    with monkeypatch.context() as patched:  # Ctrl-C during start-up, before training handles SIGINT itself
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        patched.setattr("cnnlab.run.lifecycle.build_model", interrupted)
        with pytest.raises(KeyboardInterrupt, match="^$"):  # the bare interrupt, as raised
            cnnlab.train(*TINY, logger="none", dir=tmp_path / "cut")
    assert "nothing was trained" in (tmp_path / "cut/train.log").read_text()
    assert held() == before
    assert cnnlab.train(*TINY, logger="none", dir=tmp_path / "cut").status == "finished"  # what it left is cleared


def test_ctrl_c_stops_with_a_checkpoint_and_resume_finishes(tmp_path):
    """SIGINT while training (a notebook's interrupt): the cell gets TrainingInterrupted, a KeyboardInterrupt, after
    the current step, with a checkpoint; the process goes on, and resume() continues the run in its dir."""
    run_dir = tmp_path / "stopped"
    before = held()

    def interrupt():  # once the first epoch is logged, the run is inside its fit
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = run_dir / "train.log"
            if log.exists() and "epoch 1/4" in log.read_text():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.005)

    poke = threading.Thread(target=interrupt)
    poke.start()
    with pytest.raises(KeyboardInterrupt, match="checkpoint written") as stopped:
        cnnlab.train("trainer.max_epochs=4", "trainer.limit_train_batches=20", logger="none", dir=run_dir)
    poke.join()
    assert isinstance(stopped.value, TrainingInterrupted) and "checkpoint written" in str(stopped.value)
    run = stopped.value.run
    assert run.dir == run_dir and run.status == "stopped" and (run_dir / "checkpoints/last.ckpt").is_file()
    assert "stopped by SIGINT" in (run_dir / "train.log").read_text()
    assert 1 <= len(cnnlab.load(run_dir).history) < 4
    assert held() == before

    finished = run.resume()
    assert finished == run and finished.status == "finished" and finished.metrics["epochs_completed"] == 4
    assert list(finished.history["epoch"]) == [1, 2, 3, 4]


def test_evaluate_predict_explain_export(trained, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    result = trained.evaluate(tta="flip")
    assert result["tta"] == "flip" and result["images"] == 500 and 0 <= result["test/acc"] <= 1
    assert list((tmp_path / "outputs/eval").glob("*/*/eval_metrics.json"))

    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
    pixels = np.asarray(Image.open(image))
    from_file, from_array, from_pil = trained.predict([image, pixels, Image.open(image).convert("RGB")], topk=2)
    assert from_file["image"] == str(image) and len(from_file["top"]) == 2
    assert (from_array["image"], from_pil["image"]) == (1, 2)
    assert from_array["top"] == from_file["top"] == from_pil["top"]  # the same pixels, however they came
    with pytest.raises(ConfigError, match="uint8"):
        trained.predict(pixels.astype(np.float32))

    pictures = trained.explain(n_images=4)
    assert pictures.out_dir == trained.dir / "explain" and pictures["gradcam"].is_file()
    assert pictures._repr_html_().count("data:image/png;base64,") == len(pictures) >= 3

    exported = trained.export("torchscript", out=tmp_path / "model.pt")
    assert Path(exported["path"]).is_file() and exported["num_classes"] == 10


def test_load_refuses_what_is_no_training_run(tmp_path):
    with pytest.raises(ConfigError, match="no such run dir"):
        cnnlab.load(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not the directory of a cnnlab-train run"):
        cnnlab.load(tmp_path)


def test_progress_in_a_notebook_is_tqdms_widget(monkeypatch):
    """In a Jupyter kernel (its stderr no terminal) trainer.progress=auto shows tqdm's notebook widget when
    ipywidgets can draw it; elsewhere nothing changes."""
    from cnnlab.engine import progress

    assert progress.notebook_tqdm() is None  # no kernel here: auto is decided by the stream, as before
    assert progress.Progress("auto", 1).mode == "plain"
    bars = []

    class Widget:
        def __init__(self, **options):
            bars.append(options)

        def close(self):
            pass

    monkeypatch.setattr(progress, "notebook_tqdm", lambda: Widget)
    shown = progress.Progress("auto", 2)
    shown.start_epoch(1, steps=5)
    shown.end_epoch(1, {"train/loss": 1.0}, 0.1, improved=False)
    assert shown.mode == "bar" and bars[0]["total"] == 5 and bars[0]["desc"] == "epoch 1/2"


def test_doctor_reports_a_broken_setup(tmp_path):
    """cnnlab.doctor runs the command's checklist; the report's checks can be read in code and render as a table."""
    report = cnnlab.doctor("data=digits", "logger=none", "trainer.summary=none", "data.std=[0.00392156862745098]",
                           "doctor.lr_range.enabled=false", "doctor.gradients.steps=3", "doctor.overfit.steps=30",
                           "doctor.data.grid_images=8", dir=tmp_path / "doctor")
    assert report.dir == tmp_path / "doctor" and (report.dir / "doctor.json").is_file()
    assert report.worst == "FAIL" and report["input statistics"].status == "FAIL"
    assert report["input statistics"] in report.failed and "data.std" in report["input statistics"].advice
    assert [c["name"] for c in json.loads((report.dir / "doctor.json").read_text())["checks"]] == [
        c.name for c in report]
    assert "FAIL" in report._repr_html_() and "| FAIL | input statistics |" in report._repr_markdown_()


def test_summary_is_the_inspectors_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = cnnlab.summary("model=lenet5")
    assert report.params == 61_706 and report.model == "lenet5"
    assert str(report).startswith("lenet5 on a 1x28x28 input") and "<pre>" in report._repr_html_()
    with pytest.raises(ConfigError, match="model=resnet19 is not in the zoo"):
        cnnlab.summary("model=resnet19")
    assert not list(tmp_path.iterdir())  # it writes nothing, not even a run dir


def test_a_sweep_runs_every_job_and_records_a_failed_one(tmp_path):
    """cnnlab.sweep is `cnnlab-train -m` in the process: one job per value, a failed job recorded while the others
    run, the sweep's summary files, and the jobs as a comparison; the process is left as it was."""
    before, token = held(), os.environ.get("CNNLAB_SWEEP_TOKEN")
    swept = cnnlab.sweep("optimizer.lr=0.01,-1", *TINY, logger="none", dir=tmp_path / "sweep")
    assert swept.dir == tmp_path / "sweep" and (swept.dir / "summary.md").is_file()
    assert [run.dir.name for run in swept.runs] == ["0", "1"] and (swept.dir / "1/failure.json").is_file()
    rows = {row["run"]: row for row in swept.table.to_dict("records")}
    assert rows["0"]["status"] == "completed" and rows["1"]["status"] == "failed"
    assert "optimizer.lr=-1 must be > 0" in rows["1"]["error"]
    assert held() == before and os.environ.get("CNNLAB_SWEEP_TOKEN") == token


def test_a_log_handler_of_the_users_stays_open_through_runs(tmp_path, monkeypatch):
    """Hydra configures each job's logging with dictConfig, which closes every handler in the process; a notebook's
    and the user's own must come out of a run open and still writing (a closed FileHandler of mode "w" would reopen
    on its next record and empty its file)."""
    monkeypatch.chdir(tmp_path)
    mine = logging.FileHandler(tmp_path / "mine.log", mode="w")
    logger = logging.getLogger("users.own")
    logger.addHandler(mine)
    try:
        logger.warning("before the run")
        cnnlab.train(*TINY, logger="none")
        logger.warning("after the run")
    finally:
        logger.removeHandler(mine)
        mine.close()
    assert (tmp_path / "mine.log").read_text() == "before the run\nafter the run\n"


@pytest.mark.slow  # a two-trial study and a lesson's smoke run (about 10 s); the commands' own tests cover the rest
def test_tune_returns_the_study_and_lab_the_page(tmp_path, monkeypatch):
    import cnnlab.lab.lessons  # noqa: F401  (binds cnnlab.lab to the package, which must still be callable)

    monkeypatch.chdir(tmp_path)
    study = cnnlab.tune("data=digits", "search.study_name=api", "search.n_trials=2", "search.pruner.name=none",
                        "~search.space.weight_decay", "~search.space.batch_size", "trainer.limit_train_batches=3",
                        max_epochs=1, logger="none")
    assert len(study.trials) == 2 and study.best_value is not None
    study_dir = tmp_path / "outputs/search/api"
    assert (study_dir / "summary.md").is_file() and len(list((study_dir / "trials").glob("*/metrics.json"))) == 2
    again = cnnlab.tune("data=digits", "search.study_name=api", "search.n_trials=3", "search.pruner.name=none",
                        "~search.space.weight_decay", "~search.space.batch_size", "trainer.limit_train_batches=3",
                        max_epochs=1, logger="none")
    assert len(again.trials) == 3  # the same study, continued
    page = cnnlab.lab("lenet", quick=True, out=tmp_path / "lab")
    assert page.path == tmp_path / "lab/lenet-quick/lenet.md" and page._repr_markdown_().startswith("# LeNet-5")
    with pytest.raises(ConfigError, match="no-such-lesson"):
        cnnlab.lab("no-such-lesson")
