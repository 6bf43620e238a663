"""Shared fixtures: compose the real config tree with overrides, pointed at a temporary run dir."""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Test processes share the cores (pytest -n): one thread each, set before torch is imported, and inherited by
    # the commands tests start; several OpenMP thread pools on the same cores wait on each other.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

from cnnlab.config.compose import compose_config  # noqa: E402  (after the thread settings above)
from commands import run_in_process  # noqa: E402
from postgres import postgres_url  # noqa: F401  (a real PostgreSQL server for the search storage tests)

REPO = Path(__file__).resolve().parents[1]

# Small and fast unless a test says otherwise: a few epochs, no console output.
FAST = ["trainer.progress=none", "trainer.max_epochs=2"]


def compose_cfg(run_dir: Path, *overrides: str, config_name: str = "train"):
    return compose_config(list(overrides), run_dir, config_name)


# ---- the `unit` set: `pytest -m unit`, about a minute on 2 cores ------------------------------------------------
# Every test of the default run is `unit` unless it is `integration`: it starts a process, trains beyond a few
# steps or runs a whole command. A test is `integration` when marked so (@pytest.mark.integration), when its file
# is listed below, or when it uses a fixture below; a `unit` test that starts a process fails (_unit_guard).
INTEGRATION_FIXTURES = {"run_cli", "run_cli_process", "trained_run", "postgres_url"}
INTEGRATION_FILES = {
    "test_accumulation.py", "test_api.py", "test_averaging.py", "test_bf16.py", "test_bench_gpu.py", "test_bench_imagefolder.py",
    "test_class_imbalance.py", "test_cli.py", "test_decoded_cache.py", "test_decoded_cache_distributed.py",
    "test_distributed.py", "test_doctor.py", "test_early_stopping.py", "test_engine.py", "test_eval_predict.py",
    "test_experiments.py", "test_explain.py", "test_faults.py", "test_file_systems.py", "test_finetune.py",
    "test_hostile_inputs.py", "test_imagefolder.py", "test_lab.py", "test_launchers.py", "test_limit_batches.py",
    "test_lr_finder.py", "test_metrics_csv.py", "test_output_paths.py", "test_resume.py", "test_run_dir_ownership.py",
    "test_run_dirs.py", "test_search_storage.py", "test_shards.py", "test_shards_distributed.py",
    "test_source_tree.py", "test_study_storage_faults.py", "test_sweep_faults.py", "test_tensorboard.py",
    "test_top_k.py", "test_training.py", "test_tta.py", "test_tune.py", "test_untrusted_files.py", "test_zoo.py",
    "test_mlflow.py",
}


@pytest.hookimpl(tryfirst=True)  # before -m selects by the marks given here
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("integration"):
            continue
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in INTEGRATION_FILES:
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_guard(request, monkeypatch):
    """A `unit` test starts no process: subprocess, multiprocessing (DataLoader workers too) and fork fail it."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args, **kwargs):
        pytest.fail(f"{request.node.nodeid} started a process, which a `unit` test never does: mark it "
                    f"@pytest.mark.integration (or list its file in tests/conftest.py INTEGRATION_FILES)",
                    pytrace=False)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)


@pytest.fixture(scope="session", autouse=True)
def _session_cache_home(tmp_path_factory):
    """Fixtures shared by several tests (set up before any test's own) keep the decoded cache in a temporary
    folder too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("session_cache_home")))
        yield


@pytest.fixture(autouse=True)
def private_cache_home(_session_cache_home, tmp_path_factory, monkeypatch):
    """Every test (and every command it starts, which inherits the environment) keeps cnnlab's decoded cache in
    a temporary folder of its own, never in the user's ~/.cache."""
    home = tmp_path_factory.mktemp("cache_home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides, run="run") -> a composed train config whose run dir is tmp_path/run."""

    def make(*overrides: str, run: str = "run", config_name: str = "train"):
        base = FAST if config_name == "train" else []
        return compose_cfg(tmp_path / run, *base, *overrides, config_name=config_name)

    return make


def cli_env() -> dict:
    """Environment for running a cnnlab command in a subprocess: this checkout's code first on the path, also
    when another copy of cnnlab is installed and the command runs in another directory."""
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)


def _run_cli(module: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"cnnlab.cli.{module}", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def run_cli():
    """run_cli(module, *args, cwd=...) runs `python -m cnnlab.cli.<module> args...` as a user would, by calling
    the command's main() in this process (tests/commands.py): exit status, stdout and stderr as a process's."""
    return run_in_process


@pytest.fixture
def run_cli_process():
    """run_cli_process(module, *args, cwd=...): the command in a process of its own, for what only a process
    shows (its exit status under a launcher, signals, what a fresh interpreter imports)."""
    return _run_cli


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One short real training run shared by tests that only read its outputs (checkpoints, events, metrics)."""
    from cnnlab.run.lifecycle import train

    run_dir = tmp_path_factory.mktemp("shared") / "run"
    cfg = compose_cfg(run_dir, "trainer.progress=none", "trainer.max_epochs=3", "logger.histogram_every_n_epochs=1")
    metrics = train(cfg, overrides=[])
    return run_dir, metrics
