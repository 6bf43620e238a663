"""A training run from Python (cnnlab.train, Run.resume) by the code path of `cnnlab-train`.

run_training() makes the checks the command makes before Hydra starts (cnnlab.config.overrides, cnnlab.run.precheck),
then runs the same Hydra job (cnnlab.api.jobs) with the same task, cnnlab.run.lifecycle.train: the same config
composition, validation, run dir (outputs/<date>/<time>_<pid>), claim and marker, .hydra/ record, train.log,
metrics.json and log lines. What the command turns into a message and an exit status is raised instead:
ConfigError (bad input), RunError (a run that cannot go on), TrainingInterrupted (Ctrl-C, a notebook's interrupt:
stopped after the current step with a checkpoint written; run.resume() continues it) or TrainingStopped (another
signal).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from cnnlab.api.jobs import RUN_DIR_KEY, quoted, run_job
from cnnlab.config.compose import config_dir
from cnnlab.config.overrides import check_override_keys, override_key
from cnnlab.errors import ConfigError, RunError, TrainingInterrupted, TrainingStopped
from cnnlab.run import precheck

log = logging.getLogger("cnnlab")

# Keyword arguments of train() and Run.resume(), and the override each one writes. A config group's keyword
# chooses its option (model="resnet20" is model=resnet20); the others set one key.
GROUPS = ("model", "data", "augment", "optimizer", "scheduler", "trainer", "logger", "experiment")
KEYS = {"max_epochs": "trainer.max_epochs", "lr": "optimizer.lr", "batch_size": "data.batch_size",
        "seed": "seed", "device": "trainer.device", "precision": "trainer.precision", "dir": RUN_DIR_KEY}


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return quoted(value)


def overrides_of(overrides, keys: dict) -> list[str]:
    """The override strings (as given), then those of the keyword arguments (GROUPS and KEYS)."""
    args = []
    for item in overrides:
        if not isinstance(item, str):
            raise TypeError(f"overrides are strings like 'model=resnet20' or 'trainer.max_epochs=2', not "
                            f"{type(item).__name__} {item!r}")
        args.append(item)
    for name, value in keys.items():
        if name in GROUPS:
            args.append(f"{name}={_value(value)}")
        elif name in KEYS:
            args.append(f"{KEYS[name]}={_value(str(Path(value)) if name == 'dir' else value)}")
        else:
            raise TypeError(f"unexpected keyword argument {name!r}: the keywords are {', '.join(GROUPS + tuple(KEYS))}"
                            f"; set any other key with an override string, e.g. 'trainer.patience=5'")
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError("-m/--multirun: train() runs one job; a sweep is cnnlab.sweep(...), with the same overrides")
    return args


def run_training(args: list[str]) -> Path:
    """Run cnnlab-train's Hydra job with these overrides; returns the run dir."""
    where: list[Path] = []

    def task(cfg):
        from cnnlab.experiments.sweep import continues_sweep
        from cnnlab.run.lifecycle import train as train_run

        where.append(Path(str(cfg.paths.output_dir)))
        try:
            return continues_sweep(train_run)(cfg)
        except (ConfigError, RunError) as bad:  # as the command reports them: in the console and train.log
            log.error("error: %s", bad)
            raise
        except TrainingStopped as stopped:
            if stopped.signum == signal.SIGINT:
                log.error("%s. Continue with: cnnlab.load(%r).resume()", stopped.what, str(where[0]))
            else:
                log.error("%s", stopped)
            raise
        except KeyboardInterrupt:  # before training installed its own handler (start-up), as the command says
            log.error("interrupted by Ctrl-C before training started; nothing was trained")
            raise

    try:
        # the command's checks before Hydra starts, in its order: keys that exist, a run dir that can be written,
        # a config that passes validation (Hydra creates the run dir and its log file before any cnnlab code runs)
        check_override_keys(args, config_dir(), "train")
        precheck.check_output_location(args)
        precheck.check_config(args, "train")
        run_job("train", "train", args, task, argv=["cnnlab.train", *args])
    except TrainingStopped as stopped:
        if stopped.signum != signal.SIGINT:
            raise
        raise TrainingInterrupted(f"{stopped.what}. Continue with: cnnlab.load({str(where[0])!r}).resume()",
                                  where[0]) from None
    except (ConfigError, RunError) as bad:
        raise bad.with_traceback(None) from None  # its message says it all, as the command's line does
    return where[0]


def resume(run_dir: Path, args: list[str]) -> Path:
    """Continue the run in `run_dir` in that directory from its last checkpoint (trainer.resume), with further overrides."""
    if any(override_key(a) == RUN_DIR_KEY for a in args):
        raise ConfigError("resume() continues the run in its own directory; for a new one use "
                          f"cnnlab.train('trainer.resume={run_dir}')")
    return run_training([f"trainer.resume={quoted(run_dir)}", f"{RUN_DIR_KEY}={quoted(run_dir)}", *args])
