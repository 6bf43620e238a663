"""`cnnlab-tune`: a hyper-parameter search with Optuna whose trials are ordinary cnnlab training runs.

    cnnlab-tune search=lenet_lr_wd_bs [search.n_trials=30] [any training override]

The study dir (outputs/search/<study_name>) holds study.yaml, the study's journal file (the default storage),
one run dir per trial under trials/, tune.log, and at the end summary.csv / summary.md. Running the same
command again continues the study. The checks run before any trial (cnnlab.search.plan); the trials run in
cnnlab.search.worker.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
import optuna
from omegaconf import DictConfig

from cnnlab.cli.common import check_command_line, check_config, reports_config_errors
from cnnlab.config.compose import CONFIG_DIR, hydra_overrides
from cnnlab.errors import ConfigError, RunError, TrainingStopped
from cnnlab.run.records import is_run_dir, read_run
from cnnlab.cli.launchers import under_torchrun
from cnnlab.experiments.tables import write_summary
from cnnlab.util.masking import mask_logs
from cnnlab.search.slots import counted
from cnnlab.search.plan import check_workers, plan_search
from cnnlab.search.trial import TRIALS_DIR, Interrupted
from cnnlab.search.worker import WorkerFailed, run_workers
from cnnlab.run.lifecycle import exempt_from_gc

log = logging.getLogger("cnnlab")


@hydra.main(config_path=CONFIG_DIR, config_name="tune", version_base="1.3")
@reports_config_errors
def _hydra_main(cfg: DictConfig) -> float | None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # cnnlab logs one line per trial itself
    mask_logs()  # tune.log and the console never show a database password given on the command line
    plan, study, continued = plan_search(cfg, hydra_overrides())
    done = sum(counted(t) for t in study.get_trials(deepcopy=False))
    log.info("study %s in %s: %s; %d of %d trials %s, objective %s (%s)", plan.study_name, plan.study_dir,
             "continued" if continued else "new", min(done, plan.n_trials), plan.n_trials,
             "done or running", plan.metric, study.direction.name.lower())
    workers = min(int(cfg.search.workers), max(1, plan.n_trials - done))
    if workers < int(cfg.search.workers):
        log.info("search.workers=%d: %d worker%s, one per trial left to run", int(cfg.search.workers), workers,
                 "" if workers == 1 else "s")
    try:
        run_workers(plan, workers)
    except WorkerFailed as failed:
        raise RunError(f"{failed}; {_study_state(study, plan)}") from None
    except Interrupted as stop:
        # The trial's own advice (cnnlab-train trainer.resume=) is not what goes on with a study: this is.
        cause = stop.__cause__
        signum = cause.signum if isinstance(cause, TrainingStopped) else signal.SIGINT  # else Ctrl-C at its start-up
        raise TrainingStopped(interrupted_advice(cause, bool(cfg.search.retry_interrupted)), signum) from None
    finally:
        _summarize(plan.study_dir, plan.study_name)
    return _report_best(study, plan.metric)


def _study_state(study: optuna.Study, plan) -> str:
    """What the study kept, and how to go on, after a worker died."""
    try:
        trials = study.get_trials(deepcopy=False)
    except Exception:  # the storage itself may be what failed
        return f"run the same command again to continue the study in {plan.study_dir}"
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    running = sum(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    left = f" and {running} left running by the dead worker{'s' if running != 1 else ''}" if running else ""
    return (f"the study keeps its {complete} completed trial{'s' if complete != 1 else ''}{left}; run the same "
            f"command again to continue the study (a trial a dead worker left running is failed as interrupted, "
            f"or run again with search.retry_interrupted=true)")


def refuse_torchrun() -> None:
    """A search is not one distributed run: under torchrun each process would run the whole search, and the
    trials' training would wait for the other processes in the process group forever."""
    if under_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"cnnlab-tune does not run under torchrun (WORLD_SIZE={os.environ.get('WORLD_SIZE')}): "
                          f"a search runs each trial as its own process. Run cnnlab-tune without torchrun, with "
                          f"search.workers=N for N trials at a time on this machine")


def interrupted_advice(stop: BaseException, retry: bool) -> str:
    """How a study goes on after a trial was interrupted: the same command again, never a resume of the trial."""
    what = (stop.what if isinstance(stop, TrainingStopped) else
            "interrupted by Ctrl-C while its trial was starting")
    rule = ("the interrupted trial runs again from its start, with the same values, as a new trial" if retry else
            "the interrupted trial stays failed and a new trial takes its place in the budget "
            "(search.retry_interrupted=true runs it again from its start)")
    return (f"{what}. Run the same cnnlab-tune command again to continue the study: finished trials are kept, "
            f"and {rule}")


def _summarize(study_dir: Path, name: str) -> None:
    trials = sorted(d for d in (study_dir / TRIALS_DIR).glob("*") if is_run_dir(d))
    if trials:
        try:
            path = write_summary([read_run(d) for d in trials], study_dir, f"Study {name}")
        except OSError as bad:  # a full disk: the error that stopped the search is the one to report
            log.warning("could not write the summary of the trials in %s (%s)", study_dir, bad.strerror or bad)
            return
        log.info("summary of %d trials: %s", len(trials), path)


def _report_best(study: optuna.Study, metric: str) -> float | None:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        log.info("no trial has completed yet")
        return None
    best = study.best_trial
    log.info("best: trial %d, %s %.4f, in %s", best.number, metric, best.value, best.user_attrs.get("run_dir"))
    log.info("to train it again: cnnlab-train %s", " ".join(best.user_attrs.get("overrides", [])))
    return best.value


@reports_config_errors
def main() -> None:
    refuse_torchrun()
    check_command_line(sys.argv[1:], "tune")
    cfg = check_config(sys.argv[1:], "tune")  # before Hydra creates the study dir and tune.log
    if cfg is not None:
        check_workers(int(cfg.search.workers))
    try:
        _hydra_main()
    finally:
        exempt_from_gc()


if __name__ == "__main__":
    main()
