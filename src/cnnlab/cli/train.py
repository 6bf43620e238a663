"""`cnnlab-train`: compose the config with Hydra, then train one model (cnnlab.run.lifecycle.train).

The entry point is thin: it checks the command line before Hydra starts, and returns the monitored
validation metric to Hydra's sweepers.
"""

from __future__ import annotations

import gc
import shutil
import sys

import hydra
from omegaconf import DictConfig

from cnnlab.cli.common import check_command_line, check_config, reports_config_errors
from cnnlab.config.compose import CONFIG_DIR
from cnnlab.experiments.sweep import continues_sweep
from cnnlab.cli.launchers import torchrun_arguments


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
@reports_config_errors
@continues_sweep  # in a multirun a failed job is recorded and the other jobs still run
def _hydra_main(cfg: DictConfig) -> float:
    from cnnlab.run.lifecycle import train  # torch and the whole build path: not needed to refuse a bad command line

    metrics = train(cfg)
    # For Hydra sweepers that optimise a value: the monitored validation metric, never a test metric (tuning
    # on the test set would make its score meaningless).
    return metrics[f"best_{cfg.trainer.monitor}"]


@reports_config_errors
def main() -> None:
    check_command_line(sys.argv[1:], "train")
    check_config(sys.argv[1:], "train")  # before Hydra creates the run dir and its log file
    args, scratch = torchrun_arguments(sys.argv[1:])  # processes other than torchrun's rank 0 (else nothing)
    if scratch is not None:
        sys.argv[1:] = args
    try:
        _hydra_main()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        gc.freeze()  # shutdown's final collection then skips the run's long-lived objects (see training.exempt_from_gc)


if __name__ == "__main__":
    main()
