"""`cnnlab.train(...)` and `cnnlab.load(run_dir)`: the API's entry points (cnnlab.api.training_job does the work)."""

from __future__ import annotations

from pathlib import Path

from cnnlab.api.handle import Run
from cnnlab.api.training_job import overrides_of, run_training
from cnnlab.errors import ConfigError, TrainingInterrupted


def train(*overrides: str, **keys) -> Run:
    """Train one model as `cnnlab-train <overrides>` would and return the finished Run. Override strings as on the
    command line; keyword arguments for common keys (cnnlab.api.training_job.GROUPS and KEYS):

        cnnlab.train("model=resnet20", "data=cifar10", max_epochs=2, lr=0.05)

    Raises ConfigError (bad input: the command's one-line message), RunError (a run that cannot go on), and on
    Ctrl-C (a notebook's interrupt) TrainingInterrupted, a KeyboardInterrupt, after the current step with a
    checkpoint written: its `.run.resume()` continues the run.
    """
    return Run(_training(overrides_of(overrides, keys)))


def _training(args: list[str]) -> Path:
    try:
        return run_training(args)
    except TrainingInterrupted as stopped:
        stopped.run = Run(stopped.run_dir)
        raise


def load(run_dir) -> Run:
    """The run in `run_dir` (a cnnlab-train run dir: finished, stopped, failed or resumed) as a Run."""
    from cnnlab.run.rundir import MARKER, kind_of

    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{run_dir}: no such run dir")
    kind = kind_of(path)
    if kind not in (None, "train") or (kind is None and not (path / MARKER).exists()
                                       and not (path / "metrics.json").exists()):
        raise ConfigError(f"{run_dir} is not the directory of a cnnlab-train run"
                          + (f" (its marker says {kind})" if kind else f" (no {MARKER})"))
    return Run(path)
