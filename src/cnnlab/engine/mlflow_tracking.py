"""MLflow beside TensorBoard (logger.mlflow, docs/tracking.md): one MLflow run per training run.

What a run sends: the flattened config as params (masked by the caller), tags (git commit, run dir, command line),
every epoch's metrics with the epoch as step, the final metrics (metrics.json's numbers) and, at the end, the run's
small files as artifacts (metrics.json, metrics.csv, the model summary, the resolved config, environment.json,
train.log), the test confusion matrix (JSON and a PNG heat map) and, with logger.mlflow.log_checkpoints, the
checkpoints. The runs of one group (a sweep dir, a study dir) are children of one parent run, found or created
through a small file in that dir (PARENT_FILE); CNNLAB_MLFLOW_PARENT_RUN_ID names a parent run outright.

Never loses the run: every call to MLflow is caught; the first failure is logged once (what was not sent, where
to, and that the run's files are the record) and nothing more is sent for that run. HTTP requests are bounded by
logger.mlflow.timeout_s with one retry, unless MLFLOW_HTTP_REQUEST_* variables say otherwise.

mlflow is imported only when a run starts, so `import cnnlab` and runs without MLflow never load it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import torch

from cnnlab.engine.callbacks import Callback
from cnnlab.engine.images import confusion_image
from cnnlab.errors import TrainingStopped
from cnnlab.util.masking import mask

log = logging.getLogger("cnnlab")

PARENT_ENV = "CNNLAB_MLFLOW_PARENT_RUN_ID"  # a run id: every run of this process (and its children) goes under it
PARENT_FILE = "mlflow_parent.json"          # in a group's dir: the parent run of its runs
LOCAL_DB = "mlflow.db"                      # the default store, under paths.output_root
LOCAL_ARTIFACTS = "mlartifacts"             # the default store's artifacts, beside it (mlflow server's layout)
ARTIFACTS = ("metrics.json", "metrics.csv", "model_summary.txt", "model_summary.json", "config_resolved.yaml",
             "environment.json", "train.log")
PARAM_VALUE_MAX = 500   # what every MLflow >= 2 server accepts (newer ones take 6000)
PARAMS_PER_CALL = 100   # log_batch's limit
METRICS_PER_CALL = 1000
_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-./ ]")


def local_store(output_root) -> tuple[str, str]:
    """The default store under `output_root`: (an SQLite tracking URI, the artifact folder for its experiments)."""
    root = Path(output_root).resolve()
    return f"sqlite:///{root / LOCAL_DB}", str(root / LOCAL_ARTIFACTS)


@dataclass
class MlflowSpec:
    """Where and what one run sends (built by cnnlab.run.tracking from the config)."""

    tracking_uri: str
    experiment: str
    run_name: str
    run_dir: Path
    params: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    artifact_location: str | None = None  # for an experiment this store creates (the local store's folder)
    group: Path | None = None             # the dir whose runs share one parent run (a sweep's, a study's)
    log_checkpoints: bool = False
    timeout_s: float = 10.0


def _key(name: str) -> str:
    """A metric or param name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return _KEY_CHARS.sub("_", str(name))


def _number(value) -> bool:
    return isinstance(value, (int, float))  # bool included: True -> 1.0


def _reason(error: BaseException) -> str:
    """The short cause of a failed call: the socket error where there is one, else the first line, clipped."""
    text = str(error)
    found = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if found:
        return found.group(0).strip()
    for known in ("Read timed out", "Connection refused", "Max retries exceeded"):
        if known in text:
            return known
    line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return mask(line[:200])


@contextlib.contextmanager
def _store_lock(uri: str):
    """For an SQLite store: an exclusive flock beside the database file while held. The first run creates the
    database's tables (MLflow's migrations); runs that start at once (a parallel sweep's jobs) would otherwise
    each migrate it and all fail. Other stores: nothing."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(unquote(uri[len("sqlite:///"):]))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes (or its holder dies)
        yield


@contextlib.contextmanager
def _http_limits(timeout_s: float):
    """MLflow's HTTP requests bounded for the calls inside: `timeout_s` each and one retry (its defaults wait
    minutes for a server that is down); variables the user set are left as they are. urllib3's line per retry
    is held back: the one warning of a failure is cnnlab's."""
    limits = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
              "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}
    added = [k for k in limits if k not in os.environ]
    os.environ.update({k: limits[k] for k in added})
    retries = logging.getLogger("urllib3.connectionpool")
    level = retries.level
    retries.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries.setLevel(level)
        for k in added:
            os.environ.pop(k, None)


class MlflowTracker:
    """One MLflow run: started, sent metrics, finished with artifacts; never raises (see the module docstring)."""

    def __init__(self, spec: MlflowSpec):
        self.spec = spec
        self.client = None
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self.failed = False
        self.ended = False

    @property
    def where(self) -> str:
        return mask(self.spec.tracking_uri)

    def _send(self, what: str, call):
        """call() with MLflow's requests bounded; its result, or None once anything failed (logged the first time)."""
        if self.failed:
            return None
        try:
            with _http_limits(self.spec.timeout_s):
                return call()
        except Exception as bad:  # a server down or refusing, a locked database, a bad value: never fatal
            self.failed = True
            log.warning("MLflow: could not send %s to %s (%s); nothing more of this run is sent there: its files "
                        "in %s are the record", what, self.where, _reason(bad), self.spec.run_dir)
            return None

    # ---- the run ----
    def start(self) -> None:
        if self.run_id is None and not self.failed:
            self._send("the run's start (params, tags)", self._start)

    def _start(self) -> None:
        from mlflow.entities import Param  # mlflow, only for a run that logs to it
        from mlflow.tracking import MlflowClient

        spec = self.spec
        with _store_lock(spec.tracking_uri):
            client = MlflowClient(tracking_uri=spec.tracking_uri)
            experiment_id = self._experiment(client)
            parent = os.environ.get(PARENT_ENV) or self._group_parent(client, experiment_id)
        tags = {k: mask(str(v)) for k, v in spec.tags.items()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        run = client.create_run(experiment_id, run_name=spec.run_name, tags=tags)
        self.client, self.run_id, self.parent_id = client, run.info.run_id, parent
        values = {_key(k): str(v)[:PARAM_VALUE_MAX] for k, v in spec.params.items()}  # one value per key
        params = [Param(k, v) for k, v in values.items()]
        for i in range(0, len(params), PARAMS_PER_CALL):
            client.log_batch(self.run_id, params=params[i:i + PARAMS_PER_CALL])
        log.info("MLflow: run %s in experiment %r at %s", self.run_id, spec.experiment, self.where)

    def _experiment(self, client) -> str:
        """The id of the experiment named logger.mlflow.experiment: created when missing (another run creating it
        at the same moment is fine), restored when deleted."""
        name = self.spec.experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client.create_experiment(name, artifact_location=self.spec.artifact_location)
            except Exception:
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _group_parent(self, client, experiment_id: str) -> str | None:
        """The parent run of the group's runs: the one its dir names, else a new one, named there. Two jobs that
        start at once both create one; the file is written only by the first (a hard link never replaces a file),
        and the other deletes its own and takes that one."""
        group = self.spec.group
        if group is None:
            return None
        file = Path(group) / PARENT_FILE
        found = self._read_parent(file, experiment_id)
        if found is not None:
            return found or None
        parent = client.create_run(experiment_id, run_name=Path(group).name,
                                   tags={"cnnlab.group_dir": str(group)}).info.run_id
        record = {"tracking_uri": self.where, "experiment_id": experiment_id, "run_id": parent}
        try:
            with tempfile.NamedTemporaryFile("w", dir=group, prefix=".mlflow_parent", delete=False) as tmp:
                json.dump(record, tmp)
            try:
                os.link(tmp.name, file)
            except FileExistsError:
                client.delete_run(parent)
                parent = self._read_parent(file, experiment_id) or None
            finally:
                os.unlink(tmp.name)
        except OSError as bad:  # a dir this process cannot write: the parent is this run's alone
            log.warning("MLflow: the parent run %s is not recorded in %s (%s)", parent, file, bad)
        return parent

    def _read_parent(self, file: Path, experiment_id: str) -> str | None:
        """The parent run id `file` names for this store and experiment; "" when it names another's; None if absent."""
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError):
            return None
        same = record.get("tracking_uri") == self.where and record.get("experiment_id") == experiment_id
        return str(record.get("run_id")) if same else ""

    def metrics(self, values: dict, step: int, what: str) -> None:
        """The numeric `values` at `step` (booleans as 0/1); names MLflow refuses have their odd characters as _."""
        if self.run_id is None or self.failed:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_key(k), float(v), now, int(step)) for k, v in values.items() if _number(v)]

        def send():
            for i in range(0, len(batch), METRICS_PER_CALL):
                self.client.log_batch(self.run_id, metrics=batch[i:i + METRICS_PER_CALL])
        self._send(what, send)

    def finish(self, status: str, finals: dict | None, step: int, confusion=None, classes=None) -> None:
        """End the run: the final metrics, the artifacts, its status (FINISHED, FAILED, KILLED); the parent's end
        time moves to now. Once only."""
        if self.ended or self.run_id is None:
            return
        self.ended = True
        if finals:
            self.metrics(finals, step, "the final metrics")
        self._send("the artifacts", lambda: self._artifacts(confusion, classes))
        self._send(f"the run's end ({status})", lambda: self.client.set_terminated(self.run_id, status))
        if self.parent_id and self.spec.group is not None:
            self._send("the parent run's end", lambda: self.client.set_terminated(self.parent_id, "FINISHED"))

    def _artifacts(self, confusion, classes) -> None:
        run_dir = self.spec.run_dir
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(run_dir / name))
        if confusion is not None:
            with tempfile.TemporaryDirectory() as tmp:
                write_confusion(Path(tmp), confusion, classes)
                self.client.log_artifacts(self.run_id, tmp)
        if self.spec.log_checkpoints:
            for ckpt in sorted((run_dir / "checkpoints").glob("*.ckpt")):
                self.client.log_artifact(self.run_id, str(ckpt), "checkpoints")


def write_confusion(folder: Path, confusion: torch.Tensor, classes) -> None:
    """confusion_matrix.json ({"classes", "matrix"}: rows = true class) and confusion_matrix.png (row-normalised)."""
    from PIL import Image

    matrix = confusion.tolist()
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(len(matrix))]
    (folder / "confusion_matrix.json").write_text(json.dumps({"classes": names, "matrix": matrix}) + "\n")
    pixels = (confusion_image(confusion.cpu()).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(folder / "confusion_matrix.png")


class MlflowCallback(Callback):
    """Sends the run to MLflow through an MlflowTracker: it starts with the fit, every epoch's metrics follow,
    and teardown finishes it (final metrics from metrics.json, artifacts, status)."""

    def __init__(self, tracker: MlflowTracker):
        self.tracker = tracker
        self.status: str | None = None
        self.tested = False
        self.confusion = self.classes = None
        self.test_metrics: dict = {}

    def on_fit_start(self, trainer) -> None:
        self.tracker.start()

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        epoch = metrics["epoch"]
        self.tracker.metrics({k: v for k, v in metrics.items() if k != "epoch"}, epoch, f"epoch {epoch}'s metrics")

    def on_exception(self, trainer, error: BaseException) -> None:
        self.status = "KILLED" if isinstance(error, (TrainingStopped, KeyboardInterrupt)) else "FAILED"

    def on_test_end(self, trainer, metrics: dict, confusion: torch.Tensor, classes) -> None:
        self.tested = True
        self.test_metrics = dict(metrics)
        self.confusion, self.classes = confusion.detach().cpu(), list(classes) if classes is not None else None

    def teardown(self, trainer) -> None:
        summary = self.tracker.spec.run_dir / "metrics.json"
        finished = self.status is None and self.tested and summary.is_file()
        finals = self.test_metrics
        if finished:
            try:
                finals = json.loads(summary.read_text())
            except (OSError, ValueError):
                pass
        self.tracker.finish("FINISHED" if finished else (self.status or "FAILED"), finals, trainer.epoch,
                            self.confusion, self.classes)
