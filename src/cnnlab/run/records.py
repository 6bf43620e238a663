"""One run directory as a record: its overrides, resolved config, metrics and how it ended.

A run dir holds what `cnnlab-train` writes (config_resolved.yaml, metrics.json, .hydra/overrides.yaml, the
TensorBoard event file) and, when the run did not finish, `failure.json` written by `write_failure`. Only files
are read, so records can be made in any process (a sweep's launcher, cnnlab-compare, a search's storage).
"""

from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cnnlab.engine.early_stopping import resolve_monitor_mode
from cnnlab.errors import ConfigError, RunError
from cnnlab.util.outpaths import write_bytes_atomic
from cnnlab.config.overrides import split_override

FAILURE_FILE = "failure.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config_resolved.yaml"
OVERRIDES_FILE = ".hydra/overrides.yaml"
# Files only a cnnlab run dir has (one is enough: a run that failed at start-up has only its failure record).
RUN_FILES = (METRICS_FILE, FAILURE_FILE, CONFIG_FILE, ".cnnlab-run.json", OVERRIDES_FILE)

STATUSES = ("completed", "failed", "pruned", "incomplete")


@dataclass
class RunRecord:
    """What a run dir says about its run. `config` is flat: dotted keys ('optimizer.lr') -> values."""

    run_dir: Path
    overrides: dict[str, str] = field(default_factory=dict)
    config: dict[str, object] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    status: str = "incomplete"
    error: str | None = None
    wall_time_s: float | None = None
    best_epoch: int | None = None
    monitor: str | None = None
    monitor_mode: str | None = None   # min | max (resolved from 'auto')
    failure: dict = field(default_factory=dict)   # failure.json as written, extra keys included

    @property
    def best_value(self) -> float | None:
        """The monitored validation metric's best value, None when the run has none."""
        if self.monitor is None:
            return None
        value = self.metrics.get(f"best_{self.monitor}")
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def write_failure(run_dir: Path, error: BaseException | str, status: str = "failed", **extra) -> Path:
    """Record in run_dir/failure.json why the run did not finish: status (failed | pruned), the error's type
    and message, and any extra facts (pruned_at_epoch=3, overrides=[...]). Returns the file's path."""
    if status not in ("failed", "pruned"):
        raise ValueError(f"status must be 'failed' or 'pruned', not {status!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(error, BaseException):
        record = {"status": status, "error_type": type(error).__name__, "message": str(error)}
        if not _expected(error):  # a bug, not bad input: keep the traceback for whoever fixes it
            record["traceback"] = "".join(traceback.format_exception(error))
    else:
        record = {"status": status, "error_type": None, "message": str(error)}
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record.update(extra)
    path = run_dir / FAILURE_FILE
    write_bytes_atomic(json.dumps(record, indent=2, default=str) + "\n", path)
    return path


def _expected(error: BaseException) -> bool:
    return isinstance(error, (ConfigError, RunError)) or type(error).__name__ == "TrialPruned"


def read_run(run_dir: Path) -> RunRecord:
    """Read a run dir into a RunRecord. Missing or unreadable files leave their fields empty; the status is
    failed/pruned when failure.json says so, completed when metrics.json exists, else incomplete."""
    run_dir = Path(run_dir)
    metrics, unreadable = _read_mapping(run_dir / METRICS_FILE)
    failure = _read_json(run_dir / FAILURE_FILE) or {}
    config = flatten(read_yaml(run_dir / CONFIG_FILE) or {})
    overrides = read_overrides(run_dir)
    if not overrides and isinstance(failure.get("overrides"), list):  # failed before the run dir was claimed
        overrides = parse_overrides(failure["overrides"])

    status, error = ("completed" if metrics else "incomplete"), unreadable
    if failure.get("status") in ("failed", "pruned") and not _failure_is_stale(run_dir, failure):
        status = failure["status"]
        error = _error_text(failure)

    monitor = config.get("trainer.monitor")
    mode = config.get("trainer.monitor_mode", "auto")
    best_epoch = metrics.get("best_epoch")
    return RunRecord(
        run_dir=run_dir, overrides=overrides, config=config, metrics=metrics, status=status, error=error,
        wall_time_s=metrics.get("wall_time_s"), best_epoch=best_epoch if isinstance(best_epoch, int) else None,
        monitor=str(monitor) if monitor else None,
        monitor_mode=resolve_monitor_mode(str(monitor), str(mode)) if monitor else None, failure=failure)


def _failure_is_stale(run_dir: Path, failure: dict) -> bool:
    """A 'failed' record older than metrics.json belongs to an earlier attempt that a resume has since finished.
    (A pruned run keeps its metrics and its record: both describe the same attempt.)"""
    if failure.get("status") != "failed":
        return False
    try:
        return (run_dir / METRICS_FILE).stat().st_mtime > (run_dir / FAILURE_FILE).stat().st_mtime
    except OSError:
        return False


def _error_text(failure: dict) -> str:
    message = str(failure.get("message") or "").strip()
    kind = failure.get("error_type")
    if kind and kind not in ("ConfigError", "RunError"):  # the user's own errors read best as the message alone
        return f"{kind}: {message}" if message else kind
    return message


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The run's command-line overrides (.hydra/overrides.yaml) as key -> value string, in their order."""
    items = read_yaml(Path(run_dir) / OVERRIDES_FILE)
    return parse_overrides(items) if isinstance(items, list) else {}


def parse_overrides(items: list) -> dict[str, str]:
    """['optimizer.lr=0.01', '+x=1', '~y'] -> {'optimizer.lr': '0.01', 'x': '1', 'y': ''}; hydra.* keys dropped."""
    out = {}
    for item in items:
        key, value, _ = split_override(item)
        if key and not key.startswith("hydra."):
            out[key] = value
    return out


def flatten(node, prefix: str = "") -> dict[str, object]:
    """Nested dicts -> {'a.b.c': leaf}; lists are leaves."""
    out = {}
    if isinstance(node, dict):
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and value:
                out.update(flatten(value, name))
            else:
                out[name] = value
    elif prefix:
        out[prefix] = node
    return out


def read_curve(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """Per-epoch values of a scalar tag (val/acc, train/loss, ...) from the run's TensorBoard event files,
    as (epoch, value) sorted by epoch; a resumed run's re-logged epochs keep their latest value."""
    # TensorBoard's reader costs a second of imports: only curves need it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    points: dict[int, tuple[float, float]] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if tag not in acc.Tags().get("scalars", []):
            continue
        for event in acc.Scalars(tag):
            if event.step not in points or event.wall_time >= points[event.step][0]:
                points[event.step] = (event.wall_time, float(event.value))
    return [(step, value) for step, (_, value) in sorted(points.items())]


def _read_mapping(path: Path) -> tuple[dict, str | None]:
    """A JSON file's mapping, and why there is none when the file is there but unusable (not JSON, not a
    mapping, not a regular file, unreadable): `metrics.json is not JSON: Expecting value: line 1 column 1`."""
    from cnnlab.util.outpaths import file_kind

    try:
        kind = file_kind(path)
    except ConfigError as bad:
        return {}, f"{path.name}: {bad}"
    if kind == "missing":
        return {}, None
    if kind != "file":
        return {}, f"{path.name} is {'a directory' if kind == 'dir' else kind}, not a regular file"
    try:
        data = json.loads(path.read_text())
    except OSError as bad:
        return {}, f"{path.name} cannot be read: {bad.strerror or type(bad).__name__}"
    except ValueError as bad:
        return {}, f"{path.name} is not JSON: {bad}"
    if not isinstance(data, dict):
        return {}, f"{path.name} is not a JSON mapping (it holds a {type(data).__name__})"
    return data, None


def _read_json(path: Path) -> dict | None:
    if file_kind_is_special(path):
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def file_kind_is_special(path: Path) -> bool:
    """A FIFO, device or socket in a run dir is never opened (reading a FIFO would wait forever)."""
    from cnnlab.util.outpaths import file_kind

    try:
        return file_kind(path) not in ("file", "missing", "dir")
    except ConfigError:
        return True


def read_yaml(path: Path):
    if file_kind_is_special(path):
        return None
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
