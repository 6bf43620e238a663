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
import os
import sys
import uuid
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from cnnlab.errors import ConfigError, RunError, TrainingStopped
from cnnlab.run import rundir
from cnnlab.run.records import is_run_dir, read_run
from cnnlab.experiments.job_notes import SWEEP_TOKEN, escaped, note_job, noted_jobs
from cnnlab.experiments.job_workers import keep_jobs_apart

log = logging.getLogger("cnnlab")


def continues_sweep(task):
    """Decorate a Hydra task function: in MULTIRUN mode a failed job is recorded in its dir instead of ending
    the sweep; a single run raises as before. A signal (TrainingStopped, Ctrl-C) still stops the sweep."""

    @functools.wraps(task)
    def wrapper(cfg: DictConfig):
        rundir.forget_claims()  # an earlier job of this process (basic launcher) claimed its own dir, not this one's
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
            if rundir.record_failure(job_dir, bad, overrides=overrides) is None:
                _note_refused(job_dir, bad, overrides)
                log.error("job %s failed; %s is not this job's (it holds another run), so nothing was written "
                          "there; the sweep goes on", job_dir.name, job_dir)
            else:
                log.error("job %s failed; the sweep goes on (recorded in %s)", job_dir.name,
                          job_dir / "failure.json")
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


def _note_refused(job_dir: Path, error: BaseException, overrides: list[str]) -> None:
    """A job refused a dir that is not its own: noted in the sweep dir, for the summary to report."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    note_job(Path(str(hydra_cfg.sweep.dir)), hydra_cfg.job.num, job_dir, str(error), overrides, "refused")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The run dirs directly under a sweep dir, in job-number order (numbers first, then by name)."""
    found = [p for p in Path(sweep_dir).iterdir() if is_run_dir(p)] if Path(sweep_dir).is_dir() else []
    return sorted(found, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def summarize_sweep(sweep_dir: Path, died: dict[str, str] | None = None) -> tuple[Path | None, list]:
    """Write the sweep dir's summary files; returns (summary.md or None when no job left a run dir, records).
    died: job dir -> why, for jobs whose process died without a record of its own (shown as failed)."""
    from cnnlab.experiments.tables import write_summary  # csv/statistics: only when a sweep ends

    records = [read_run(d) for d in job_dirs(sweep_dir)]
    for record in records:
        why = (died or {}).get(escaped(Path(record.run_dir)))
        if why and record.status != "completed":
            record.status, record.error = "failed", why
    if not records:
        return None, []
    return write_summary(records, sweep_dir, f"Sweep {escaped(sweep_dir)}"), records


class SweepSummary(Callback):
    """At the end of `cnnlab-train -m`: summary files in the sweep dir, the table on the console, and exit
    status 1 when a job failed (the sweep itself ran to its end)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        os.environ[SWEEP_TOKEN] = uuid.uuid4().hex  # inherited by the jobs' worker processes
        keep_jobs_apart()  # hydra/launcher=parallel: a killed worker ends its own job only

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        notes = noted_jobs(sweep_dir)
        refused = [n for n in notes if n.get("what") == "refused"]
        died = [n for n in notes if n.get("what") == "died"]
        for note in notes:
            print(f"error: job {note['job']} ({' '.join(note.get('overrides') or [])}) "
                  f"{'did not run' if note.get('what') == 'refused' else 'died'}: {note['error']}",
                  file=sys.stderr, flush=True)
        try:
            summary, records = summarize_sweep(sweep_dir, {n["job_dir"]: n["error"] for n in died})
        except Exception as bad:  # a summary that cannot be written must not hide the runs, which are all there
            print(f"warning: no sweep summary written in {escaped(sweep_dir)}: {type(bad).__name__}: "
                  f"{escaped(bad)}", file=sys.stderr)
            if notes:
                sys.exit(1)
            return
        if summary is not None:
            # Printed rather than logged: logging still points at the last job's log file.
            print(f"\n{summary.read_text()}\nsummary: {escaped(summary)} (and summary.csv, summary_seeds.csv)",
                  flush=True)
        failed = sum(r.status == "failed" for r in records)
        if failed:
            print(f"error: {failed} of {len(records)} jobs failed (their errors are in the summary's error column "
                  f"and, where the job wrote one, its failure.json); summary: {escaped(summary)}", file=sys.stderr,
                  flush=True)
        if refused:
            print(f"error: {len(refused)} job(s) did not run: their dirs hold other runs, which were left as they "
                  f"were (a new sweep dir: leave hydra.sweep.dir unset)", file=sys.stderr, flush=True)
        if failed or notes:
            sys.exit(1)
