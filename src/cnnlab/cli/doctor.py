"""`cnnlab-doctor [training overrides]`: the checklist for a network that won't train.

Takes the same command line as cnnlab-train and builds exactly what it would (cnnlab.run.lifecycle.prepare), in a
run dir of its own (outputs/doctor/<date>/<time>_<pid>). Then, on copies of the model, it checks the data
(class balance, input statistics, duplicates across splits, a labelled sample grid), the initial loss, whether
a small batch can be memorised (and whether val then beats chance), the learning-rate range, gradient flow,
update/weight ratios and activations. Prints PASS / WARN / FAIL per check with the measured value and the next
step; writes doctor.json, PNG plots and TensorBoard images. Exit status 1 when any check FAILs, else 0.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cnnlab.cli.common import check_command_line, check_config, reports_config_errors
from cnnlab.config.compose import CONFIG_DIR
from cnnlab.diagnose.examination import doctor
from cnnlab.diagnose.report import worst


@hydra.main(config_path=CONFIG_DIR, config_name="doctor", version_base="1.3")
@reports_config_errors
def _hydra_main(cfg: DictConfig) -> None:
    checks = doctor(cfg)
    if worst(checks) == "FAIL":
        sys.exit(1)


@reports_config_errors
def main() -> None:
    check_command_line(sys.argv[1:], "doctor")
    check_config(sys.argv[1:], "doctor")  # before Hydra creates the run dir and its log file
    _hydra_main()


if __name__ == "__main__":
    main()
