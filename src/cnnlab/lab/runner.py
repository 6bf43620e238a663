"""Run a lesson: every arm once per seed, each an ordinary cnnlab training run (cnnlab.training.train), or for
the search lesson a cnnlab-tune study per arm and seed; then what the lesson's extra asks of cnnlab-doctor or
cnnlab-explain. The runs land under <out>/runs/<arm>/seed<k>; nothing here trains in a way cnnlab-train
would not."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.config import compose_config
from cnnlab.errors import ConfigError, RunError
from cnnlab.experiments.runs import RunRecord, read_run
from cnnlab.lab.lessons import Lesson

log = logging.getLogger("cnnlab.lab")

LAB_FILE = "lab.json"
QUIET = ["trainer.progress=none", "trainer.summary=none", "logger.histogram_every_n_epochs=0",
         "paths.existing_run=clear"]


@dataclass
class ArmResult:
    name: str
    overrides: list[str]
    runs: list[RunRecord] = field(default_factory=list)


@dataclass
class LessonResult:
    lesson: Lesson
    out_dir: Path
    quick: bool
    arms: list[ArmResult]
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)   # what the extra step measured (plots, values)
    measured: dict = field(default_factory=dict)  # date, machine, commit of the run (lab.json)


def arm_overrides(lesson: Lesson, arm: str, seed: int, quick: bool, extra: list[str],
                  source: Path | None = None) -> list[str]:
    """The overrides of one run: the lesson's, the arm's, the seed, quick settings, then the user's (last wins);
    {source} in an arm's override is the lesson's source run dir."""
    arm_part = [o.replace("{source}", str(source)) for o in lesson.arms[arm]]
    return [*lesson.common, *arm_part, f"seed={seed}", *(lesson.quick if quick else []), *extra]


def run_lesson(lesson: Lesson, out_dir: Path, quick: bool = False, overrides: list[str] = ()) -> LessonResult:
    from cnnlab.lab import extras

    started = time.perf_counter()
    seeds = lesson.seeds[:1] if quick else lesson.seeds
    total = len(lesson.arms) * len(seeds)
    results = []
    source = None
    if lesson.source:  # e.g. the pretraining of a transfer lesson: once, before the arms that start from it
        source = out_dir / "source"
        args = [*lesson.source, f"seed={seed_of(lesson)}", *(lesson.quick if quick else []), *overrides]
        t0 = time.perf_counter()
        record = _train(args, source)
        log.info("source run: %s (%.0f s)", _said(record), time.perf_counter() - t0)
        if record.status != "completed":
            raise RunError(f"the lesson's source run failed: {record.error}")
    for arm in lesson.arms:
        result = ArmResult(arm, list(lesson.arms[arm]))
        for seed in seeds:
            run_dir = out_dir / "runs" / arm / f"seed{seed}"
            args = arm_overrides(lesson, arm, seed, quick, list(overrides), source)
            t0 = time.perf_counter()
            if lesson.extra == "search":
                record = _tune([*args, f"search.seed={seed}"], run_dir)
            else:
                record = _train(args, run_dir)
            done = sum(len(a.runs) for a in results) + len(result.runs) + 1
            log.info("[%d/%d] %s seed %d: %s (%.0f s)", done, total, arm, seed, _said(record), time.perf_counter() - t0)
            result.runs.append(record)
        results.append(result)
    outcome = LessonResult(lesson, out_dir, quick, results)
    if lesson.extra and lesson.extra != "search":
        outcome.extras = getattr(extras, lesson.extra)(lesson, outcome, list(overrides))
    outcome.seconds = time.perf_counter() - started
    from cnnlab.lab.page import measurement

    outcome.measured = measurement()
    (out_dir / LAB_FILE).write_text(json.dumps({"lesson": lesson.name, "quick": quick, "overrides": list(overrides),
                                                 "seconds": outcome.seconds, "extras": outcome.extras,
                                                 **outcome.measured}, indent=2, default=str) + "\n")
    return outcome


def collect_lesson(lesson: Lesson, out_dir: Path) -> tuple[LessonResult, list[str]]:
    """The result of a lesson run earlier into `out_dir` (its lab.json and run dirs), to write its page again
    (e.g. after the discussion was written) without training; returns it and that run's overrides."""
    try:
        saved = json.loads((out_dir / LAB_FILE).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{out_dir} holds no finished run of lesson {lesson.name} ({LAB_FILE} missing): run "
                          f"cnnlab-lab {lesson.name} --out {out_dir} first") from None
    seeds = lesson.seeds[:1] if saved["quick"] else lesson.seeds
    arms = []
    for arm in lesson.arms:
        result = ArmResult(arm, list(lesson.arms[arm]))
        for seed in seeds:
            run_dir = out_dir / "runs" / arm / f"seed{seed}"
            result.runs.append(_best_trial(run_dir) if lesson.extra == "search" else read_run(run_dir))
        arms.append(result)
    outcome = LessonResult(lesson, out_dir, saved["quick"], arms, seconds=float(saved["seconds"]),
                           extras=saved.get("extras") or {},
                           measured={k: saved.get(k) for k in ("date", "machine", "commit")})
    return outcome, list(saved.get("overrides") or [])


def seed_of(lesson: Lesson) -> int:
    return lesson.seeds[0]


def _train(args: list[str], run_dir: Path) -> RunRecord:
    from cnnlab.training import train

    args = [*QUIET, *args]
    cfg = compose_config(args, run_dir)
    try:
        train(cfg, overrides=args)
    except RunError as bad:  # a diverged arm is a result of the lesson (the LR that is too large), not a crash
        log.warning("%s: %s", run_dir, bad)
    return read_run(run_dir)


def _tune(args: list[str], study_dir: Path) -> RunRecord:
    """One cnnlab-tune study (the command itself, in a child process: it runs its own Hydra job), recorded as
    a run record whose metrics are the study's best trial's. The same dir would continue the study: a lab
    run starts it afresh (the dir is the lab's own, and only a study dir is removed)."""
    if (study_dir / "study.yaml").is_file():
        shutil.rmtree(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cnnlab.tune", *args, f"hydra.run.dir={study_dir}", "search.workers=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (study_dir / "lab_tune.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode not in (0, 1):
        raise RunError(f"cnnlab-tune failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    return _best_trial(study_dir)


def _best_trial(study_dir: Path) -> RunRecord:
    trials = [read_run(p) for p in sorted((study_dir / "trials").glob("*")) if p.is_dir()]
    done = [t for t in trials if t.best_value is not None]
    if not done:
        return RunRecord(run_dir=study_dir, status="failed", error="no trial finished")
    sign = 1 if done[0].monitor_mode == "min" else -1
    best = min(done, key=lambda t: sign * t.best_value)
    metrics = dict(best.metrics)
    metrics.update({"trials": len(trials), "pruned": sum(t.status == "pruned" for t in trials),
                    "epochs_trained": sum(int(t.metrics.get("epochs_completed") or t.failure.get("epoch") or 0)
                                          for t in trials),
                    "best_trial": best.run_dir.name})
    wall = sum(t.wall_time_s or 0.0 for t in trials)
    return RunRecord(run_dir=best.run_dir, overrides=best.overrides, config=best.config, metrics=metrics,
                     status="completed", wall_time_s=wall, best_epoch=best.best_epoch, monitor=best.monitor,
                     monitor_mode=best.monitor_mode)


def _said(record: RunRecord) -> str:
    if record.status != "completed":
        return f"{record.status}: {record.error or ''}".strip()
    m = record.metrics
    parts = [f"test/acc {m['test/acc']:.4f}" if isinstance(m.get("test/acc"), float) else None,
             f"best {record.monitor} {record.best_value:.4f}" if record.best_value is not None else None]
    return ", ".join(p for p in parts if p) or "done"
