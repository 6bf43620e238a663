"""`cnnlab-doctor [training overrides]`: the checklist for a network that won't train.

Takes the same command line as cnnlab-train and builds exactly what it would (cnnlab.run.lifecycle.prepare), in a
run dir of its own (outputs/doctor/<date>/<time>_<pid>). Then, on copies of the model, it checks the data
(class balance, input statistics, duplicates across splits, a labelled sample grid), the initial loss, whether
a small batch can be memorised (and whether val then beats chance), the learning-rate range, gradient flow,
update/weight ratios and activations. Prints PASS / WARN / FAIL per check with the measured value and the next
step; writes doctor.json, PNG plots and TensorBoard images. Exit status 1 when any check FAILs, else 0.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from cnnlab.cli.common import check_command_line, check_config, reports_config_errors
from cnnlab.config.compose import CONFIG_DIR
from cnnlab.diagnose.checklist import Workspace, run_checklist
from cnnlab.diagnose.report import Check, render, worst, write_report
from cnnlab.diagnose.subject import Subject
from cnnlab.run.lifecycle import prepare

log = logging.getLogger("cnnlab")


def doctor(cfg: DictConfig, overrides: list[str] | None = None) -> list[Check]:
    """Build the run cnnlab-train would, run the checklist, print the report and write doctor.json."""
    # the order of doctor's [low, high] pairs (lr_range, std_range, update ratios) is validated with the config
    run = prepare(cfg, overrides, kind="doctor")
    try:
        subject = Subject.from_run(run)
        checks = run_checklist(subject, Workspace(run.run_dir, run.tb.writer))
        info, sizes = run.data.info, run.data.sizes
        about = {"model": str(cfg.model.name), "data": info.name, "classes": info.num_classes,
                 "images": sizes, "params": run.n_params, "device": str(subject.device), "run_dir": str(run.run_dir)}
        path = write_report(checks, run.run_dir / "doctor.json", about)
        header = (f"cnnlab-doctor: {cfg.model.name} ({run.n_params:,} parameters) on {info.name} "
                  f"({sizes['train']:,} train / {sizes['val']:,} val / {sizes['test']:,} test images), "
                  f"{subject.device}")
        log.info("%s", render(checks, header, f"{path} and plots in {run.run_dir}"))
    finally:
        run.trainer.teardown()  # closes the TensorBoard event file
    return checks


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
