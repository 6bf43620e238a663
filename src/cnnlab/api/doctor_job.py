"""`cnnlab.doctor(...)`: `cnnlab-doctor <overrides>` as its Hydra job (its own run dir under outputs/doctor/,
doctor.log, doctor.json and plots), by the command's own code (cnnlab.diagnose.examination.doctor); the checks
come back as a DoctorReport, which Jupyter shows as a table."""

from __future__ import annotations

import html
import logging
from pathlib import Path

from cnnlab.api.jobs import run_job
from cnnlab.api.training_job import overrides_of
from cnnlab.config.compose import config_dir
from cnnlab.config.overrides import check_override_keys
from cnnlab.errors import ConfigError, RunError
from cnnlab.run import precheck

log = logging.getLogger("cnnlab")

_COLOURS = {"PASS": "#1a7f37", "WARN": "#9a6700", "FAIL": "#cf222e"}


class DoctorReport:
    """The doctor's checks (cnnlab.diagnose.report.Check: name, status PASS/WARN/FAIL, measured, advice, values,
    plots), in the order they ran; `dir` is the doctor's run dir (doctor.json, the plots)."""

    def __init__(self, checks: list, run_dir):
        self.checks = list(checks)
        self.dir = Path(run_dir)

    @property
    def worst(self) -> str:
        """FAIL if any check failed, else WARN if any warned, else PASS (the command exits 1 on FAIL)."""
        from cnnlab.diagnose.report import worst

        return worst(self.checks)

    @property
    def failed(self) -> list:
        return [c for c in self.checks if c.status == "FAIL"]

    def __getitem__(self, name: str):
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"{name!r}: no such check; the checks are {', '.join(c.name for c in self.checks)}")

    def __iter__(self):
        return iter(self.checks)

    def __len__(self) -> int:
        return len(self.checks)

    def __str__(self) -> str:
        from cnnlab.diagnose.report import render

        return render(self.checks, f"cnnlab-doctor: {self.worst}", f"{self.dir / 'doctor.json'}")

    def __repr__(self) -> str:
        return f"DoctorReport({str(self.dir)!r}, {self.worst}: " + ", ".join(f"{c.name} {c.status}"
                                                                          for c in self.checks) + ")"

    def _repr_markdown_(self) -> str:
        rows = [f"| {c.status} | {c.name} | {_cell(c.measured)} | {_cell(c.advice)} |" for c in self.checks]
        return (f"**cnnlab doctor: {self.worst}** ({self.dir})\n\n| status | check | measured | next step |\n"
                "|---|---|---|---|\n" + "\n".join(rows))

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td style='color:{_COLOURS.get(c.status, 'inherit')};font-weight:bold'>{c.status}</td>"
            f"<td style='text-align:left'>{html.escape(c.name)}</td><td style='text-align:left'>"
            f"{html.escape(c.measured)}</td><td style='text-align:left'>{html.escape(c.advice)}</td></tr>"
            for c in self.checks)
        return (f"<table><caption style='text-align:left'><b>cnnlab doctor: {self.worst}</b> "
                f"({html.escape(str(self.dir))})</caption><tr><th>status</th><th>check</th><th>measured</th>"
                f"<th>next step</th></tr>{rows}</table>")


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def doctor(*overrides: str, **keys) -> DoctorReport:
    """Run cnnlab-doctor's checklist on the run `cnnlab.train(<the same arguments>)` would train, as the command
    does; returns the report (its checks readable in code: report["initial loss"].status). A failing check is no
    exception: see report.worst and report.failed."""
    args = overrides_of(overrides, keys)
    where: list[Path] = []

    def task(cfg):
        from cnnlab.diagnose.examination import doctor as examine

        where.append(Path(str(cfg.paths.output_dir)))
        try:
            return examine(cfg)
        except (ConfigError, RunError) as bad:  # as the command reports them: in the console and doctor.log
            log.error("error: %s", bad)
            raise

    try:
        check_override_keys(args, config_dir(), "doctor")
        precheck.check_output_location(args)
        precheck.check_config(args, "doctor")
        checks = run_job("doctor", "doctor", args, task, argv=["cnnlab.doctor", *args])
    except (ConfigError, RunError) as bad:
        raise bad.with_traceback(None) from None
    return DoctorReport(checks, where[0])
