"""`cnnlab.sweep(...)`: `cnnlab-train -m <overrides>` (a Hydra multirun: one job per combination of the
comma-separated values) as its sweep, in this process and one job after another (Hydra's basic launcher): the same
sweep dir (outputs/multirun/<date>/<time>_<pid>/<job number>), job records, failure records and summary files
(summary.md, summary.csv). Returns the jobs as a Comparison (cnnlab.compare)."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from cnnlab.api.comparison import Comparison
from cnnlab.api.handle import Run
from cnnlab.api.jobs import SWEEP_DIR_KEY, quoted, run_job
from cnnlab.api.training_job import overrides_of
from cnnlab.config.compose import config_dir
from cnnlab.config.overrides import check_override_keys, override_key
from cnnlab.errors import ConfigError, RunError, TrainingInterrupted, TrainingStopped
from cnnlab.run import precheck

log = logging.getLogger("cnnlab")


class Sweep(Comparison):
    """A sweep's jobs side by side (a Comparison: table, plot()), and `dir`, the sweep dir with summary.md."""

    def __init__(self, sweep_dir: Path, run_dirs: list[Path]):
        super().__init__(run_dirs)
        self.dir = Path(sweep_dir).resolve()


def sweep(*overrides: str, **keys) -> Sweep:
    """Train one run per combination of the values given as `key=a,b,c` (Hydra's sweep syntax, as after
    `cnnlab-train -m`), one after another in this process:

        cnnlab.sweep("optimizer.lr=0.01,0.1", "seed=1,2", max_epochs=2)

    Keyword arguments as for cnnlab.train, where `dir` is the sweep dir (hydra.sweep.dir). A job that fails is
    recorded (its row's status and error) and the others run; Ctrl-C stops the sweep after the current step of the
    job running (TrainingInterrupted, whose run is that job's)."""
    from cnnlab.experiments.job_notes import SWEEP_TOKEN
    from cnnlab.experiments.sweep import continues_sweep, job_dirs
    from cnnlab.run.lifecycle import train as train_run

    sweep_dir = keys.pop("dir", None)
    args = overrides_of(overrides, keys)
    if sweep_dir is not None:
        args.append(f"{SWEEP_DIR_KEY}={quoted(Path(sweep_dir))}")
    if any(override_key(a) == "hydra.run.dir" for a in args):
        raise ConfigError("hydra.run.dir: a sweep's jobs go under hydra.sweep.dir (sweep(..., dir=...))")
    where: list[Path] = []

    def task(cfg):
        where.append(Path(str(cfg.paths.output_dir)))
        try:
            return continues_sweep(train_run)(cfg)  # a failed job is recorded in its dir; the sweep goes on
        except TrainingStopped as stopped:
            log.error("%s", stopped.what)
            raise

    token = os.environ.get(SWEEP_TOKEN)
    try:
        check_override_keys(args, config_dir(), "train")
        precheck.check_output_location([*args, "-m"])
        found = run_job("train", "train", args, task, argv=["cnnlab.sweep", *args], multirun=True)
    except TrainingStopped as stopped:
        if stopped.signum != signal.SIGINT:
            raise
        interrupted = TrainingInterrupted(f"the sweep stopped: {stopped.what}", where[-1])
        interrupted.run = Run(where[-1])
        raise interrupted from None
    except (ConfigError, RunError) as bad:
        raise bad.with_traceback(None) from None
    finally:  # the summary's note for the jobs' processes: this sweep's, not the next one's
        if token is None:
            os.environ.pop(SWEEP_TOKEN, None)
        else:
            os.environ[SWEEP_TOKEN] = token
    return Sweep(found, job_dirs(found))
