"""MLflow beside TensorBoard (logger.mlflow): runs sent to a real `mlflow server` on 127.0.0.1 and to the local
default store, read back with MlflowClient; a tracking server that is down never costs the run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from commands import run_in_process
from servers import free_port, serving

from cnnlab.config.training_schema import Mlflow
from cnnlab.engine.mlflow_tracking import (LOCAL_ARTIFACTS, LOCAL_DB, PARENT_FILE, MlflowSpec, MlflowTracker,
                                           local_store)
from cnnlab.errors import ConfigError
from cnnlab.util.source_tree import git_commit

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

TINY = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.progress=none", "trainer.summary=totals"]
SERVER_DEADLINE_S = 120
ARTIFACTS = {"metrics.json", "metrics.csv", "model_summary.txt", "model_summary.json", "config_resolved.yaml",
             "environment.json", "train.log", "confusion_matrix.json", "confusion_matrix.png"}
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    with _NO_PROXY.open(f"{url}/health", timeout=5) as r:
        return r.status == 200


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A tracking server of its own: a temporary store (files: no database to create first, the quickest to start;
    runs are read back through its REST API either way), artifacts served by it, no job runners."""
    root = tmp_path_factory.mktemp("mlflow_server")
    url = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ, MLFLOW_ALLOW_FILE_STORE="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
               "--backend-store-uri", str(root / "store"), "--artifacts-destination", str(root / "artifacts"),
               "--workers", "1"]
    with serving(command, root / "server.log", lambda: _answers(url), SERVER_DEADLINE_S, "mlflow server", env):
        yield url


def _runs(client: MlflowClient, experiment: str):
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def _steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _train(tmp_path: Path, *overrides: str, run: str = "run") -> subprocess.CompletedProcess:
    done = run_in_process("train", *TINY, *overrides, f"hydra.run.dir={tmp_path / run}",
                          f"paths.output_root={tmp_path / 'outputs'}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# ---- a real tracking server (started once for the module: about 8 s on 2 busy cores) ----
@pytest.mark.slow  # a real mlflow server (5 s to start) or a study; the local store is read back by default
def test_a_run_is_read_back_from_the_server(mlflow_server, tmp_path):
    uri = mlflow_server.replace("http://", "http://someone:secret@")  # a password in the URI is never recorded
    _train(tmp_path, "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={uri}",
           "logger.mlflow.experiment=served", "optimizer.lr=0.002")
    run_dir = tmp_path / "run"
    assert list(run_dir.glob("events.out.tfevents.*")), "TensorBoard writes beside MLflow"
    client = MlflowClient(mlflow_server)
    [run] = _runs(client, "served")
    run_id, metrics = run.info.run_id, json.loads((run_dir / "metrics.json").read_text())
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    # params: the flattened config, as strings, the password masked
    params = run.data.params
    assert params["optimizer.lr"] == "0.002" and params["trainer.max_epochs"] == "2"
    assert params["model.name"] == "lenet5" and params["logger.mlflow.enabled"] == "True"
    assert params["logger.mlflow.tracking_uri"] == mlflow_server.replace("http://", "http://someone:***@")
    # every epoch's metrics with the epoch as step; the final metrics are metrics.json's
    assert [s for s, _ in _steps(client, run_id, "val/acc")] == [1, 2]
    assert [s for s, _ in _steps(client, run_id, "train/loss")] == [1, 2]
    assert _steps(client, run_id, "lr")[0][0] == 1
    for key in ("test/acc", "test/loss", "val/acc_best", "best_epoch", "epochs_completed"):
        assert run.data.metrics[key] == pytest.approx(float(metrics[key])), key
    assert _steps(client, run_id, "test/acc") == [(2, pytest.approx(metrics["test/acc"]))]
    # tags: the code, where the files are, how the run was started
    tags = run.data.tags
    assert tags["cnnlab.run_dir"] == str(run_dir)
    assert "logger=[tensorboard,mlflow]" in tags["cnnlab.command"]
    assert "optimizer.lr=0.002" in tags["cnnlab.overrides"]
    commit = git_commit()
    if commit is not None:
        assert tags["mlflow.source.git.commit"] == commit["commit"]
    everything = json.dumps([params, tags])
    assert "secret" not in everything
    # artifacts: the run's small files and the confusion matrix; no checkpoints unless asked
    assert {a.path for a in client.list_artifacts(run_id)} == ARTIFACTS
    sent = Path(client.download_artifacts(run_id, "metrics.json", str(tmp_path / "back")))
    assert json.loads(sent.read_text()) == metrics
    confusion = json.loads(Path(client.download_artifacts(run_id, "confusion_matrix.json",
                                                          str(tmp_path / "back"))).read_text())
    assert confusion["matrix"] == metrics["test/confusion_matrix"] and len(confusion["classes"]) == 10


@pytest.mark.slow  # a real mlflow server (5 s to start) or a study; the local store is read back by default
def test_a_sweep_is_one_parent_run_with_a_child_per_job_and_checkpoints_on_request(mlflow_server, tmp_path):
    sweep = tmp_path / "sweep"
    done = run_in_process("train", "-m", *TINY, "trainer.max_epochs=1", "logger=mlflow",
                          f"logger.mlflow.tracking_uri={mlflow_server}", "logger.mlflow.experiment=swept",
                          "logger.mlflow.log_checkpoints=true", "optimizer.lr=0.001,0.002",
                          f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    runs = _runs(client, "swept")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    [parent] = parents
    assert json.loads((sweep / PARENT_FILE).read_text())["run_id"] == parent.info.run_id
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(r.data.params["optimizer.lr"] for r in children) == ["0.001", "0.002"]
    assert parent.info.status == "FINISHED" and {r.info.status for r in children} == {"FINISHED"}
    ckpts = {a.path for a in client.list_artifacts(children[0].info.run_id, "checkpoints")}
    assert "checkpoints/last.ckpt" in ckpts


@pytest.mark.slow  # a real mlflow server (5 s to start) or a study; the local store is read back by default
def test_a_studys_trials_are_children_of_its_run(tmp_path):
    from cnnlab.config.compose import compose_config
    from cnnlab.search.plan import plan_search
    from cnnlab.search.worker import run_workers

    overrides = ["data=digits", *TINY, "trainer.max_epochs=1", "logger=mlflow", f"paths.output_root={tmp_path}",
                 "search.study_name=tracked", "search.n_trials=2", "search.sampler.name=random",
                 "search.pruner.name=none"]
    plan, _, _ = plan_search(compose_config(overrides, tmp_path / "search" / "tracked", config_name="tune"),
                             overrides)
    run_workers(plan, 1)
    runs = _runs(MlflowClient(local_store(tmp_path)[0]), "cnnlab")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "tracked" and len(children) == 2 == len(runs) - 1
    assert sorted(r.info.run_name for r in children) == ["0000", "0001"]
    assert {r.data.tags["cnnlab.run_dir"] for r in children} == {str(plan.study_dir / "trials" / n)
                                                               for n in ("0000", "0001")}


# ---- no server: the local store, a server that is down ----
def test_the_default_is_a_local_store_under_the_output_root(tmp_path):
    _train(tmp_path, "logger=mlflow")
    out = tmp_path / "outputs"
    assert (out / LOCAL_DB).is_file()
    uri, artifacts = local_store(out)
    assert uri == f"sqlite:///{out / LOCAL_DB}" and artifacts == str(out / LOCAL_ARTIFACTS)
    client = MlflowClient(uri)
    [run] = _runs(client, "cnnlab")
    assert run.info.status == "FINISHED"
    assert [s for s, _ in _steps(client, run.info.run_id, "val/loss")] == [1, 2]
    files = out / LOCAL_ARTIFACTS / run.info.run_id / "artifacts"
    assert {p.name for p in files.iterdir()} == ARTIFACTS
    assert not list((tmp_path / "run").glob("events.out.tfevents.*")), "logger=mlflow alone: no TensorBoard"


_START = """
import sys
from pathlib import Path
from cnnlab.engine.mlflow_tracking import MlflowSpec, MlflowTracker, local_store
uri, artifacts = local_store(sys.argv[1])
tracker = MlflowTracker(MlflowSpec(uri, "cnnlab", sys.argv[2], Path(sys.argv[1]), {"a": 1}, artifact_location=artifacts))
tracker.start()
print(tracker.run_id)
"""


@pytest.mark.slow  # three processes importing torch and mlflow at once: 10-30 s
def test_jobs_that_start_at_once_on_a_fresh_local_store_all_get_their_run(tmp_path):
    """A parallel sweep's first jobs: one creates the database, the others wait for it (without the lock each
    runs MLflow's migrations on it and all fail)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    jobs = [subprocess.Popen([sys.executable, "-c", _START, str(tmp_path), f"job{i}"], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    outs = [job.communicate(timeout=180) for job in jobs]
    ids = [out.strip() for out, _ in outs]
    assert all(len(i) == 32 for i in ids), [err[-2000:] for _, err in outs]
    assert {r.info.run_name for r in _runs(MlflowClient(local_store(tmp_path)[0]), "cnnlab")} == {"job0", "job1",
                                                                                                 "job2"}


def test_a_server_that_is_down_costs_nothing_but_one_warning(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = _train(tmp_path, "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={down}")
    run_dir = tmp_path / "run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2 and list(run_dir.glob("events.out.tfevents.*"))
    said = [line for line in (done.stdout + done.stderr).splitlines() if "MLflow" in line]
    warned = [line for line in said if "could not send" in line]
    assert len(warned) == 1, said
    assert f"to {down}" in warned[0] and "Connection refused" in warned[0] and str(run_dir) in warned[0]
    assert "Retrying" not in done.stdout + done.stderr
    assert (run_dir / "train.log").read_text().count("could not send") == 1


class _Refusing:
    """A tracking server that takes the run's start and then refuses everything: counts what it was asked."""

    def __init__(self):
        self.calls = []

    def log_batch(self, run_id, metrics=(), params=()):
        self.calls.append("log_batch")
        raise RuntimeError("RESOURCE_EXHAUSTED: too many requests\nmore detail")

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append(name)
        return call


def test_after_the_first_failure_nothing_more_is_tried(tmp_path, caplog):
    tracker = MlflowTracker(MlflowSpec("http://mlflow.example:5000", "x", "run", tmp_path))
    tracker.client, tracker.run_id = _Refusing(), "abc"
    with caplog.at_level(logging.WARNING, logger="cnnlab"):
        tracker.metrics({"val/acc": 0.5, "epoch": 1, "name": "text"}, 1, "epoch 1's metrics")
        tracker.metrics({"val/acc": 0.6}, 2, "epoch 2's metrics")
        tracker.finish("FINISHED", {"test/acc": 0.5}, 2)
    assert tracker.client.calls == ["log_batch"]
    [record] = caplog.records
    assert record.getMessage() == (
        f"MLflow: could not send epoch 1's metrics to http://mlflow.example:5000 (RESOURCE_EXHAUSTED: too many "
        f"requests); nothing more of this run is sent there: its files in {tmp_path} are the record")


def test_without_the_mlflow_package_the_run_is_refused_before_it_starts(make_cfg, monkeypatch):
    from cnnlab.run.lifecycle import train

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs the mlflow package: pip install 'cnnlab\[mlflow\]'"):
        train(make_cfg("logger=mlflow"), overrides=[])


def test_a_run_without_mlflow_never_imports_it(tmp_path):
    code = ("import sys, cnnlab, cnnlab.run.lifecycle, cnnlab.engine.mlflow_tracking, cnnlab.run.tracking; "
            "print('mlflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src")))
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_the_schema_section_is_what_the_migration_adds():
    from cnnlab.config.migrate import V2_ADDITIONS

    assert set(V2_ADDITIONS["logger.mlflow"]) == set(Mlflow.model_fields)
    Mlflow(**V2_ADDITIONS["logger.mlflow"])
