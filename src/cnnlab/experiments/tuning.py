"""A hyper-parameter search as cnnlab-tune runs it inside its Hydra job: plan and open the study, run its workers
(trials are ordinary training runs), summarise the trials and report the best; cnnlab-tune and cnnlab.tune call
`search`."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import optuna
from omegaconf import DictConfig

from cnnlab.errors import RunError, TrainingStopped
from cnnlab.experiments.tables import write_summary
from cnnlab.run.records import is_run_dir, read_run
from cnnlab.search.plan import plan_search
from cnnlab.search.slots import counted
from cnnlab.search.trial import TRIALS_DIR, Interrupted
from cnnlab.search.worker import WorkerFailed, run_workers
from cnnlab.util.masking import mask_logs

log = logging.getLogger("cnnlab")


def search(cfg: DictConfig, overrides: list[str]) -> optuna.Study:
    """Run the search `cfg` describes (`overrides`: the command line it was composed from) and return its study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # cnnlab logs one line per trial itself
    mask_logs()  # tune.log and the console never show a database password given on the command line
    plan, study, continued = plan_search(cfg, overrides)
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
    _report_best(study, plan.metric)
    return study



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
