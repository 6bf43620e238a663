"""`cnnlab-tune`: a hyper-parameter search with Optuna whose trials are ordinary cnnlab training runs.

    cnnlab-tune search=lenet_lr_wd_bs [search.n_trials=30] [any training override]

The study dir (outputs/search/<study_name>) holds study.yaml, the study's journal file (the default storage),
one run dir per trial under trials/, tune.log, and at the end summary.csv / summary.md. Running the same
command again continues the study. The checks run before any trial (cnnlab.search.plan); the trials run in
cnnlab.search.worker (through cnnlab.experiments.tuning).
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
import optuna
from omegaconf import DictConfig

from cnnlab.cli.common import check_command_line, check_config, reports_config_errors
from cnnlab.config.compose import CONFIG_DIR, hydra_overrides
from cnnlab.errors import ConfigError
from cnnlab.cli.launchers import under_torchrun
from cnnlab.search.plan import check_workers
from cnnlab.experiments.tuning import search
from cnnlab.run.lifecycle import exempt_from_gc

log = logging.getLogger("cnnlab")


@hydra.main(config_path=CONFIG_DIR, config_name="tune", version_base="1.3")
@reports_config_errors
def _hydra_main(cfg: DictConfig) -> float | None:
    study = search(cfg, hydra_overrides())
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return study.best_value if complete else None


def refuse_torchrun() -> None:
    """A search is not one distributed run: under torchrun each process would run the whole search, and the
    trials' training would wait for the other processes in the process group forever."""
    if under_torchrun() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"cnnlab-tune does not run under torchrun (WORLD_SIZE={os.environ.get('WORLD_SIZE')}): "
                          f"a search runs each trial as its own process. Run cnnlab-tune without torchrun, with "
                          f"search.workers=N for N trials at a time on this machine")


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
