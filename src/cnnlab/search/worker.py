"""A search worker: takes trials of the shared study until the budget is used, the time is up, or a signal.

`cnnlab-tune` runs one worker in its own process, or `search.workers` of them as child processes (each a
fresh interpreter, `spawn`), all on the same study through its storage; `cnnlab.search.slots` makes sure
that together they start exactly `search.n_trials` trials.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from cnnlab.config.compose import compose_config
from cnnlab.errors import RunError
from cnnlab.util.masking import mask_logs
from cnnlab.search.locks import study_lock
from cnnlab.search.slots import heartbeat, trial_slot
from cnnlab.search.storage import open_storage
from cnnlab.search.space import Param
from cnnlab.search.study import build_pruner, build_sampler
from cnnlab.search.trial import Interrupted, TrialSetup, record, run_trial, trial_config, trial_dir
from cnnlab.run.lifecycle import train

log = logging.getLogger("cnnlab")


@dataclass
class WorkerPlan:
    """Everything a worker needs, in plain values so that it reaches a spawned process intact."""

    study_dir: Path
    study_name: str
    storage_url: str | None
    search: dict                 # the resolved search section
    params: list[Param]
    tune_overrides: list[str]    # the command line's overrides (they compose each trial's config)
    base_overrides: list[str]    # search.overrides, then the command line's training overrides
    metric: str
    max_epochs: int
    n_trials: int
    deadline: float | None       # time.time() after which no trial starts


class TrialComposer:
    """compose(overrides, run_dir) for trials: the tune config with the trial's overrides, minus the search."""

    def __init__(self, tune_overrides: list[str]):
        self.tune_overrides = tune_overrides

    def __call__(self, overrides: list[str], run_dir: Path | None):
        cfg = compose_config([*self.tune_overrides, *overrides], run_dir or "unused", config_name="tune")
        return trial_config(cfg, run_dir)


def work(plan: WorkerPlan, worker: int = 0) -> int:
    """Run trials until none is left; returns how many this worker ran."""
    storage = open_storage(plan.storage_url, plan.study_dir)
    study = optuna.load_study(study_name=plan.study_name, storage=storage,
                              pruner=build_pruner(plan.search, plan.max_epochs))
    # a fresh single-worker study draws from search.seed itself; a continued one or another worker elsewhere
    study.sampler = build_sampler(plan.search, plan.params, stream=len(study.trials) * 1009 + worker)
    lock = study_lock(plan.study_dir, storage)
    setup = TrialSetup(plan.study_dir, plan.params, plan.base_overrides, plan.metric,
                       TrialComposer(plan.tune_overrides),
                       functools.partial(train, tracking_group=plan.study_dir))  # MLflow: the study's children
    ran = 0
    while plan.deadline is None or time.time() < plan.deadline:
        trial = trial_slot(study, plan.n_trials, lock)
        if trial is None:
            break
        log.info("trial %d: starting in %s", trial.number, trial_dir(plan.study_dir, trial.number))
        try:
            with heartbeat(study, trial):
                outcome = run_trial(trial, setup)
        except Interrupted as stop:
            record(study, trial, stop.outcome)
            raise
        record(study, trial, outcome)
        ran += 1
        log.info("trial %d: %s", trial.number, _said(trial, outcome, plan.metric))
    return ran


def _said(trial, outcome, metric: str) -> str:
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    state = outcome.state.name.lower()
    if outcome.value is not None:
        return f"{metric} {outcome.value:.4f} ({values})"
    if outcome.pruned_at is not None:
        return f"pruned after epoch {outcome.pruned_at} ({values})"
    return f"{state}: {outcome.reason} ({values})"


def run_workers(plan: WorkerPlan, workers: int) -> None:
    """Run `workers` worker processes on this machine and wait for them; the first failure is raised after all
    have ended. Each gets an equal share of the CPU threads, so they do not slow each other down."""
    if workers == 1:
        work(plan)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch threads or locks
    processes = [context.Process(target=_worker_main, args=(plan, i + 1, threads), name=f"cnnlab-tune-worker-{i + 1}")
                 for i in range(workers)]
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.join()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: they stop their trials and record them
        for p in processes:
            p.join()
        raise
    failed = [(number, p) for number, p in enumerate(processes, start=1) if p.exitcode != 0]
    if failed:
        ended = "; ".join(f"worker {number} (process {p.pid}) {_how_it_ended(p.exitcode)}" for number, p in failed)
        others = workers - len(failed)
        raise WorkerFailed(f"{ended}; {others} of {workers} workers finished normally (see tune.log in "
                           f"{plan.study_dir})")


def _how_it_ended(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"ended with exit status {exitcode}"


class WorkerFailed(RunError):
    """One or more worker processes did not end normally."""


def _worker_main(plan: WorkerPlan, worker: int, threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format=f"[worker {worker}] %(message)s")
    to_file = logging.FileHandler(plan.study_dir / "tune.log")  # beside the parent's lines, as one log
    to_file.setFormatter(logging.Formatter(f"[%(asctime)s][worker {worker}][%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(to_file)
    mask_logs()
    try:
        work(plan, worker)
    except (Interrupted, KeyboardInterrupt):
        raise SystemExit(130) from None
