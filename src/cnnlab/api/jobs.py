"""A command's Hydra job run inside this process, as its console script runs it, then the process left as it was.

The console scripts (cnnlab.cli.*) start through `hydra.main`, which composes the config tree (configs/), resolves
hydra.run.dir, creates the run dir, configures logging (the console and the run's `<task>.log`) and calls the
command's task function. `run_job` does the same through the same Hydra calls (Hydra.run), without `hydra.main`'s
argument parsing and exit: a notebook kernel goes on after a job. Afterwards Hydra's global state is cleared, the
logging handlers the job added are closed and removed, and the loggers are as they were before the job, also when
it failed or was interrupted; Hydra's own errors (an override it cannot parse or apply) become a ConfigError with
Hydra's message, as the console script prints it without a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from pathlib import Path

from cnnlab.config.compose import CONFIG_DIR
from cnnlab.config.overrides import override_key
from cnnlab.errors import ConfigError

RUN_DIR_KEY = "hydra.run.dir"


@contextlib.contextmanager
def logging_kept():
    """Every logger's handlers, level and propagation as they are now, back after the block; the handlers added
    in the block (Hydra's console and file handlers) are closed, so that no log file stays open."""
    manager = logging.Logger.manager
    loggers = lambda: [logging.getLogger()] + [lg for lg in list(manager.loggerDict.values())  # noqa: E731
                                               if isinstance(lg, logging.Logger)]
    before = {id(lg): (lg, list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers()}
    kept = {id(h) for _, handlers, *_ in before.values() for h in handlers}
    try:
        with _handlers_out_of_reach():
            yield
    finally:
        for lg in loggers():
            for handler in list(lg.handlers):
                if id(handler) not in kept:
                    lg.removeHandler(handler)
                    try:
                        handler.flush()
                        handler.close()
                    except (OSError, ValueError):
                        pass
        for lg, handlers, level, propagate, disabled in before.values():
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


@contextlib.contextmanager
def _handlers_out_of_reach():
    """Hydra sets up a job's logging with logging.config.dictConfig, which first closes every handler logging has
    registered in the process: a notebook's, or the user's own log file, which would then fail on its next record.
    The handlers that exist now leave that registry for the block and come back after it."""
    with logging._lock:
        registered, named = list(logging._handlerList), dict(logging._handlers)
        del logging._handlerList[:]
    try:
        yield
    finally:
        with logging._lock:
            logging._handlerList[:0] = [ref for ref in registered if ref() is not None]
            for name, handler in named.items():
                logging._handlers.setdefault(name, handler)


@contextlib.contextmanager
def process_settings_kept():
    """What a run sets for the whole process, back after the block, so that each job starts as in a new process:
    torch's deterministic mode, cuDNN and TF32 flags and matmul precision (cnnlab.engine.seeding, .devices), and
    the garbage collector's frozen generation (cnnlab.run.lifecycle.exempt_from_gc freezes what is alive, which
    in a command lasts until exit; in a kernel the run's objects must be collectable once the run is over)."""
    import gc

    torch = sys.modules.get("torch")  # a run imports it; if it is not imported yet, its defaults are the state
    saved = None
    if torch is not None:
        saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                 torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                 torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                 torch.get_float32_matmul_precision())
    try:
        yield
    finally:
        gc.unfreeze()
        torch = sys.modules.get("torch")
        if torch is not None:
            if saved is None:  # imported by the job: the defaults of a fresh import
                saved = (False, False, False, False, False, True, "highest")
            deterministic, warn_only, benchmark, cudnn_deterministic, matmul_tf32, cudnn_tf32, precision = saved
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, cudnn_deterministic
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
            torch.set_float32_matmul_precision(precision)


def _one_line(error: BaseException) -> str:
    """What the console script prints for one of Hydra's errors (its message, and the OmegaConf error under it)."""
    from omegaconf.errors import OmegaConfBaseException

    text = str(error).strip()
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip() and str(cause).strip() not in text:
        text = f"{text}\n{str(cause).strip()}"
    return text or type(error).__name__


def quoted(value) -> str:
    """A value as an override's right-hand side: plain when Hydra reads it as it is, else quoted."""
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_/.:+-]+", text) and not text.startswith(("+", "-")):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _free_dir(run_dir: Path) -> Path:
    """run_dir, or when it exists already (two runs of this process in one second get one `<time>_<pid>` name),
    the first free `<name>-2`, `<name>-3`, ... beside it."""
    candidate, n = run_dir, 1
    while candidate.exists():
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
    return candidate


class _Stopped(BaseException):
    """A sweep's job stopped by a signal (TrainingStopped): carried past Hydra's launcher, which would record an
    Exception and start the next job, as the command's exit does; raised as it was after the sweep."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


SWEEP_DIR_KEY = "hydra.sweep.dir"


def run_job(config_name: str, task_name: str, overrides: list[str], task, argv: list[str] | None = None,
            own_dir: bool = True, multirun: bool = False):
    """Run `task(cfg)` as Hydra's job for config `config_name` with these overrides; returns what it returns.

    task_name: Hydra's job name, which names the log file (`train` -> train.log), as the console script's module
    name does. Without hydra.run.dir among the overrides, the config's own pattern is resolved here and, if that
    directory exists already (an earlier job of this process started in the same second: the pattern's time and
    process id are the same), the first free `<name>-2`, ... is passed to the job as hydra.run.dir. A later second
    cannot name a directory of this process's earlier jobs, so Hydra's own resolution is otherwise left alone.
    multirun: run the overrides' sweep (`-m`) with Hydra's sweeper and launcher and the config's callbacks (the
    sweep summary) and return the sweep dir, always passed as hydra.sweep.dir (the pattern resolved here, made
    unique as above); a job's failure is the task's to record (cnnlab.experiments.sweep.continues_sweep), a
    signal stops the sweep, and the summary's exit status for failed jobs is left to the caller's table.
    own_dir=False: the job writes no run dir of its own (cnnlab-summary's hydra.run.dir is `.`), none is chosen.
    argv: what the run's records (its marker, environment.json) name as its command line, sys.argv during the job
    (a notebook kernel's own is no record of the run): e.g. ["cnnlab.train", *overrides].
    """
    from hydra._internal.hydra import Hydra  # Hydra: loaded when a job runs, as under the console scripts
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    in_job, failed = [], []

    def job(cfg):
        in_job.append(True)  # from here on, errors are the task's, not Hydra's composition's
        try:
            return task(cfg)
        except Exception as bad:  # raised below as it is: Hydra would log its own "Error executing job" first
            if multirun:
                raise _Stopped(bad) from None
            failed.append(bad)
            return None

    GlobalHydra.instance().clear()  # what an earlier job that was cut short may have left
    overrides = list(overrides)
    saved_argv = sys.argv
    sys.argv = list(argv) if argv is not None else [f"cnnlab-{task_name}", *overrides]
    with logging_kept(), process_settings_kept():
        try:
            hydra = Hydra.create_main_hydra2(task_name=task_name,
                                             config_search_path=create_automatic_config_search_path(None, None,
                                                                                                    CONFIG_DIR))
            key = SWEEP_DIR_KEY if multirun else RUN_DIR_KEY
            given = [o for o in overrides if override_key(o) == key]
            if own_dir and (multirun or not given):
                composed = hydra.compose_config(config_name, overrides, with_log_configuration=False,
                                                run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN)
                run_dir = Path(str(OmegaConf.select(composed, key)))
                if not given and run_dir.exists():  # an earlier job of this process, started in the same second
                    run_dir = _free_dir(run_dir)
                    overrides.append(f"{key}={quoted(run_dir)}")
                elif not given and multirun:
                    overrides.append(f"{key}={quoted(run_dir)}")
            if multirun:
                try:
                    hydra.multirun(config_name=config_name, task_function=job,
                                   overrides=[*overrides, "hydra.mode=MULTIRUN"])
                except _Stopped as stopped:
                    raise stopped.error from None
                except SystemExit as done:  # the sweep summary's exit status 1: a job failed (its row says so)
                    if done.code != 1:
                        raise
                return run_dir
            ret = hydra.run(config_name=config_name, task_function=job, overrides=[*overrides, "hydra.mode=RUN"])
            if failed:
                raise failed[0]
            return ret.return_value
        except (HydraException, OmegaConfBaseException) as bad:
            if in_job:
                raise
            raise ConfigError(_one_line(bad)) from None
        finally:
            GlobalHydra.instance().clear()
            sys.argv = saved_argv
