"""Hydra multirun (`cnnlab-train -m ...`): a failing job is recorded and the sweep goes on; at the end the
sweep dir gets summary.csv, summary_seeds.csv and summary.md, and failed jobs make the exit status 1.

`SweepSummary` is registered in configs/hydra/default.yaml. Hydra calls on_multirun_end in the launching
process whichever launcher ran the jobs (basic, joblib, submitit), so it reads the job dirs' files and
nothing else. `continues_sweep` wraps the task function: in a multirun, the error a job would end the whole
process with (ConfigError's exit 2, a RunError, a bug) is logged, written to the job's failure.json and the
job returns NaN, which Hydra's sweepers pass on without raising (an optimising sweeper sees a failed trial).
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnlab.errors import ConfigError, RunError, TrainingStopped
from cnnlab.experiments.runs import is_run_dir, read_run, write_failure

log = logging.getLogger("cnnlab")


def continues_sweep(task):
    """Decorate a Hydra task function: in MULTIRUN mode a failed job is recorded in its dir instead of ending
    the sweep; a single run raises as before. A signal (TrainingStopped, Ctrl-C) still stops the sweep."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        try:
            return task(cfg)
        except Exception as bad:
            job = _multirun_job()
            if job is None or isinstance(bad, TrainingStopped):  # a signal stops the whole sweep, as Ctrl-C does
                raise
            job_dir, overrides = job
            if isinstance(bad, (ConfigError, RunError)):
                log.error("error: %s", bad)
            else:  # not the user's input: keep the traceback in the job's log
                log.exception("error: job failed with %s: %s", type(bad).__name__, bad)
            write_failure(job_dir, bad, overrides=overrides)
            log.error("job %s failed; the sweep goes on (recorded in %s)", job_dir.name, job_dir / "failure.json")
            return math.nan

    return wrapper


def _multirun_job() -> tuple[Path, list[str]] | None:
    """(job dir, overrides) when running as a job of a Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The run dirs directly under a sweep dir, in job-number order (numbers first, then by name)."""
    found = [p for p in Path(sweep_dir).iterdir() if is_run_dir(p)] if Path(sweep_dir).is_dir() else []
    return sorted(found, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def summarize_sweep(sweep_dir: Path) -> tuple[Path | None, list]:
    """Write the sweep dir's summary files; returns (summary.md or None when no job left a run dir, records)."""
    from cnnlab.experiments.summary import write_summary  # csv/statistics: only when a sweep ends

    records = [read_run(d) for d in job_dirs(sweep_dir)]
    if not records:
        return None, []
    return write_summary(records, sweep_dir, f"Sweep {sweep_dir}"), records


class SweepSummary(Callback):
    """At the end of `cnnlab-train -m`: summary files in the sweep dir, the table on the console, and exit
    status 1 when a job failed (the sweep itself ran to its end)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            summary, records = summarize_sweep(sweep_dir)
        except Exception as bad:  # a summary that cannot be written must not hide the runs, which are all there
            print(f"warning: no sweep summary written in {sweep_dir}: {type(bad).__name__}: {bad}", file=sys.stderr)
            return
        if summary is None:
            return
        # Printed rather than logged: logging still points at the last job's log file.
        print(f"\n{summary.read_text()}\nsummary: {summary} (and summary.csv, summary_seeds.csv)", flush=True)
        failed = sum(r.status == "failed" for r in records)
        if failed:
            print(f"error: {failed} of {len(records)} jobs failed (their errors are in the summary's error column "
                  f"and each job's failure.json); summary: {summary}", file=sys.stderr, flush=True)
            sys.exit(1)
