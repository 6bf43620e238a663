"""The doctor's examination: build the run cnnlab-train would (cnnlab.run.lifecycle.prepare) in a run dir of its
own, run the checklist on it, print the report and write doctor.json; the work of `cnnlab-doctor`
(cnnlab.cli.doctor) and of the Python API's cnnlab.doctor."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from cnnlab.diagnose.checklist import Workspace, run_checklist
from cnnlab.diagnose.report import Check, render, write_report
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
