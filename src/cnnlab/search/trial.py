"""One search trial: Optuna's values as overrides, an ordinary training run, and its outcome for the study.

A trial composes the training config with the study's overrides and its own values, then calls
`cnnlab.cli.train.train` with `PruningReport`, a callback that reports the objective after every epoch and,
when the pruner says so, ends training after that epoch the way early stopping does (checkpoints, the test
pass and metrics.json are written as for any run). No second training loop exists for searching.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
import torch
from omegaconf import DictConfig, open_dict
from optuna.distributions import CategoricalDistribution, IntDistribution

from cnnlab.engine.callbacks import Callback
from cnnlab.errors import ConfigError, RunError, TrainingStopped
from cnnlab.run import rundir
from cnnlab.run.records import write_failure
from cnnlab.util.masking import MaskingFilter
from cnnlab.search.space import Param, has_key

log = logging.getLogger("cnnlab")

TRIALS_DIR = "trials"


class PruningReport(Callback):
    """Reports the objective metric to the trial after each epoch; stops training when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        value = metrics[self.metric]
        self.trial.report(value, trainer.epoch)
        # after the last epoch nothing is left to save: Hyperband's and ASHA's top rung can fall on it (epochs
        # 1/3/9 with max_epochs=9), and a trial pruned there would be a finished run whose result the study drops
        if trainer.epoch < trainer.options.max_epochs and self.trial.should_prune():
            self.pruned_at = trainer.epoch
            trainer.should_stop = True
            log.info("trial %d pruned after epoch %d (%s %.4f)", self.trial.number, trainer.epoch, self.metric, value)


@dataclass
class Outcome:
    """What a trial ended as: its Optuna state, the objective value (COMPLETE only) and why, if not complete."""

    state: optuna.trial.TrialState
    value: float | None = None
    reason: str | None = None
    interrupted: bool = False
    pruned_at: int | None = None


@dataclass
class TrialSetup:
    """What every trial of one study shares.

    compose(overrides, run_dir) -> the training config with these overrides (the study's and the command
    line's first), run by `train(cfg, overrides, callbacks)`.
    """

    study_dir: Path
    params: list[Param]
    base_overrides: list[str]
    metric: str
    compose: Callable[[list[str], Path], DictConfig]
    train: Callable


def trial_dir(study_dir: Path, number: int) -> Path:
    return Path(study_dir) / TRIALS_DIR / f"{number:04d}"


def suggest(trial: optuna.Trial, setup: TrialSetup) -> list[str]:
    """Ask the trial for a value of each parameter; return the overrides.

    Group choices (model, optimizer) come first; a parameter whose key the chosen options do not have
    (optimizer.momentum with optimizer=adam) is not suggested in that trial, so conditional spaces need no
    extra syntax and the sampler sees only values that had an effect.
    """
    overrides = []
    for p in setup.params:
        if p.group:
            overrides.append(p.override(_suggest(trial, p)))
    chosen = setup.compose([*setup.base_overrides, *overrides], None) if overrides else None
    for p in setup.params:
        if p.group:
            continue
        if chosen is not None and not has_key(chosen, p.key):
            continue
        overrides.append(p.override(_suggest(trial, p)))
    return overrides


def _suggest(trial: optuna.Trial, p: Param):
    d = p.distribution
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(p.name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(p.name, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(p.name, d.low, d.high, step=d.step, log=d.log)


def run_trial(trial: optuna.Trial, setup: TrialSetup) -> Outcome:
    """Train one trial in its own run dir; never raises for a failure of the trial itself.

    A signal (Ctrl-C, SIGTERM) or KeyboardInterrupt is re-raised after the trial is recorded as
    interrupted, so the command stops; everything else a trial can fail with is recorded and the study goes on.
    """
    run_dir = trial_dir(setup.study_dir, trial.number)
    trial.set_user_attr("run_dir", str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    with _logged_to(run_dir / "train.log"):  # as cnnlab-train's Hydra job would: the run's own log file
        return _run(trial, setup, run_dir)


@contextlib.contextmanager
def _logged_to(path: Path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _run(trial: optuna.Trial, setup: TrialSetup, run_dir: Path) -> Outcome:
    started = time.perf_counter()
    rundir.forget_claims()  # the trial dir is this trial's only once its run claims it
    overrides = None
    try:
        overrides = [*setup.base_overrides, *suggest(trial, setup)]
        trial.set_user_attr("overrides", overrides)
        cfg = setup.compose(overrides, run_dir)
        report = PruningReport(trial, setup.metric)
        metrics = setup.train(cfg, overrides, (report,))
    except (TrainingStopped, KeyboardInterrupt) as stop:
        reason = f"interrupted ({stop})" if str(stop) else "interrupted (Ctrl-C)"
        _record(run_dir, stop, overrides)
        raise Interrupted(Outcome(optuna.trial.TrialState.FAIL, reason=reason, interrupted=True)) from stop
    except Exception as error:  # the study goes on: a diverged run, bad values, out of memory, a bug
        reason = _failure_reason(error)
        _record(run_dir, error, overrides)
        level = logging.WARNING if isinstance(error, (ConfigError, RunError, torch.OutOfMemoryError)) else logging.ERROR
        log.log(level, "trial %d failed: %s", trial.number, reason, exc_info=level == logging.ERROR)
        return Outcome(optuna.trial.TrialState.FAIL, reason=reason)
    trial.set_user_attr("wall_time_s", round(time.perf_counter() - started, 2))
    if report.pruned_at is not None:
        write_failure(run_dir, f"pruned after epoch {report.pruned_at}", status="pruned",
                      pruned_at_epoch=report.pruned_at)
        return Outcome(optuna.trial.TrialState.PRUNED, pruned_at=report.pruned_at)
    value = metrics.get(f"best_{setup.metric}")
    if value is None or not math.isfinite(value):
        return Outcome(optuna.trial.TrialState.FAIL, reason=f"{setup.metric} was not finite ({value})")
    return Outcome(optuna.trial.TrialState.COMPLETE, value=float(value))


def _record(run_dir: Path, error: BaseException, overrides: list[str] | None) -> None:
    """failure.json in the trial's dir, unless that dir is another run's (then only the study records it)."""
    if rundir.record_failure(run_dir, error, overrides=overrides) is None:
        log.warning("%s holds another run: nothing of this trial was written there", run_dir)


class Interrupted(Exception):
    """A trial stopped by a signal: recorded as such, then the command stops."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.reason)
        self.outcome = outcome


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, torch.OutOfMemoryError):
        return "out of memory: " + str(error).splitlines()[0]
    if isinstance(error, ConfigError):
        return "invalid config: " + str(error)
    if isinstance(error, RunError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def record(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    """Tell the study how the trial ended, with the reason and the pruning epoch as user attributes."""
    if outcome.reason:
        trial.set_user_attr("fail_reason", outcome.reason)
    if outcome.interrupted:
        trial.set_user_attr("interrupted", True)
    if outcome.pruned_at is not None:
        trial.set_user_attr("pruned_at_epoch", outcome.pruned_at)
    study.tell(trial, outcome.value, state=outcome.state, skip_if_finished=True)


def trial_config(cfg: DictConfig, run_dir: Path | None) -> DictConfig:
    """The training config of a trial: the tune config without its search section, in the trial's run dir."""
    with open_dict(cfg):
        cfg.pop("search", None)
        cfg.task_name = "train"
        if run_dir is not None:
            cfg.paths.output_dir = str(run_dir)
    return cfg
