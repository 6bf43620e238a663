"""Run a lesson: every arm once per seed, each an ordinary cnnlab training run (cnnlab.run.lifecycle.train), or for
the search lesson a cnnlab-tune study per arm and seed; then what the lesson's extra asks of cnnlab-doctor or
cnnlab-explain. Each lesson owns a folder, <out>/<lesson>[-quick] (its marker, .cnnlab-lab.json, names the
lesson), and its runs land under <lesson folder>/runs/<arm>/seed<k>; nothing here trains in a way cnnlab-train
would not. Running a lesson again goes on where it stopped: a run that finished with the same overrides is kept,
one that was interrupted continues from its checkpoint, anything else runs afresh."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cnnlab.config.compose import compose_config
from cnnlab.errors import ConfigError, RunError, TrainingStopped
from cnnlab.run.records import OVERRIDES_FILE, RunRecord, read_yaml, read_run
from cnnlab.run.rundir import record_failure
from cnnlab.lab.arms import QUIET, ArmResult, LessonResult, arm_overrides
from cnnlab.lab.lessons import Lesson
from cnnlab.util.outpaths import write_bytes_atomic

log = logging.getLogger("cnnlab.lab")

LAB_FILE = "lab.json"
LESSON_MARKER = ".cnnlab-lab.json"   # {"lesson": name, "quick": bool}: whose runs a lesson folder holds


def lesson_dir(root: Path, lesson: Lesson, quick: bool, existing: bool = False) -> Path:
    """The folder of a lesson's runs under --out: <root>/<lesson>[-quick]. With `existing` (writing a page from
    runs made earlier), a root that is itself that lesson's folder (the layout before lessons had their own
    folders: its lab.json names the lesson) is used as it is."""
    own = Path(root) / f"{lesson.name}{'-quick' if quick else ''}"
    if existing and not own.exists() and _saved_lesson(Path(root)) == lesson.name:
        return Path(root)
    return own


def _saved_lesson(out_dir: Path) -> str | None:
    for name in (LESSON_MARKER, LAB_FILE):
        try:
            saved = json.loads((out_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and saved.get("lesson"):
            return str(saved["lesson"])
    return None


def claim_lesson_dir(out_dir: Path, lesson: Lesson, quick: bool) -> None:
    """Make out_dir this lesson's (its marker), or refuse a folder that holds another lesson's runs."""
    other = _saved_lesson(out_dir)
    if other is not None and other != lesson.name:
        raise ConfigError(f"{out_dir} holds the runs of lesson {other}, not {lesson.name}: each lesson keeps its own "
                          f"folder (cnnlab-lab {lesson.name} --out DIR puts them in DIR/{lesson.name})")
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / LESSON_MARKER
    if not marker.exists():
        write_bytes_atomic(json.dumps({"lesson": lesson.name, "quick": quick}) + "\n", marker)


def run_lesson(lesson: Lesson, out_dir: Path, quick: bool = False, overrides: list[str] = ()) -> LessonResult:
    from cnnlab.lab import extras

    claim_lesson_dir(out_dir, lesson, quick)
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
            try:
                if lesson.extra == "search":
                    record = _tune([*args, f"search.seed={seed}"], run_dir)
                else:
                    record = _train(args, run_dir)
            except TrainingStopped as stop:
                raise TrainingStopped(_stopped_advice(stop, lesson, arm, seed, quick), stop.signum) from None
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


def _stopped_advice(stop: TrainingStopped, lesson: Lesson, arm: str, seed: int, quick: bool) -> str:
    """The stop message with the way on for a lesson: the same cnnlab-lab command again (not cnnlab-train)."""
    what = stop.what
    again = "the same cnnlab-lab command" + f" (cnnlab-lab {lesson.name}{' --quick' if quick else ''} ...)"
    how = ("its study continues where it stopped (cnnlab-tune's rule for the interrupted trial applies)"
           if lesson.extra == "search" else "it continues from its checkpoint")
    return (f"{what}. Arm {arm}, seed {seed} was interrupted: run {again} again; finished runs are kept and {how}")


def collect_lesson(lesson: Lesson, out_dir: Path) -> tuple[LessonResult, list[str]]:
    """The result of a lesson run earlier into `out_dir` (its lab.json and run dirs), to write its page again
    (e.g. after the discussion was written) without training; returns it and that run's overrides. A folder of
    another lesson's runs is refused: a page shows only its own lesson's numbers."""
    try:
        saved = json.loads((out_dir / LAB_FILE).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{out_dir} holds no finished run of lesson {lesson.name} ({LAB_FILE} missing): run "
                          f"cnnlab-lab {lesson.name} --out {out_dir.parent} first") from None
    if saved.get("lesson") != lesson.name or _saved_lesson(out_dir) != lesson.name:
        raise ConfigError(f"{out_dir} holds the runs of lesson {saved.get('lesson')}, not {lesson.name}: its page "
                          f"is written from its own runs only")
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
    from cnnlab.run.lifecycle import train

    args = [*QUIET, *args]
    earlier = _earlier(run_dir, args)
    if earlier == "finished":
        log.info("%s: finished earlier with the same overrides, kept", run_dir)
        return read_run(run_dir)
    if earlier == "interrupted":
        log.info("%s: interrupted earlier, continues from its checkpoint", run_dir)
        args_now = [*args, f"trainer.resume={run_dir}"]
    else:
        args_now = args
    cfg = compose_config(args_now, run_dir)
    try:
        train(cfg, overrides=args_now)
    except RunError as bad:  # a diverged arm is a result of the lesson (the LR that is too large), not a crash
        if isinstance(bad.__cause__, OSError):  # but a full disk is the machine's: the lesson stops
            raise
        log.warning("%s: %s", run_dir, bad)
        record_failure(run_dir, bad)  # not to be continued by the next run of the lesson
    return read_run(run_dir)


def _earlier(run_dir: Path, args: list[str]) -> str | None:
    """What an earlier run of this lesson left in run_dir with exactly these overrides: "finished" (metrics.json,
    no newer failure), "interrupted" (a checkpoint to continue, no metrics), else None (run afresh)."""
    saved = read_yaml(run_dir / OVERRIDES_FILE)
    if not isinstance(saved, list) or [str(o) for o in saved] != list(args):
        return None
    record = read_run(run_dir)
    if record.status == "completed":
        return "finished"
    if record.status in ("incomplete", "failed") and (run_dir / "checkpoints" / "last.ckpt").is_file() \
            and record.failure.get("status") != "failed":
        return "interrupted"
    return None


def _tune(args: list[str], study_dir: Path) -> RunRecord:
    """One cnnlab-tune study (the command itself, in a child process: it runs its own Hydra job), recorded as
    a run record whose metrics are the study's best trial's. The same dir would continue the study: a lab
    run of another search starts it afresh (the dir is the lab's own, and only a study dir is removed); the same
    search continues its study, as cnnlab-tune does: finished trials are kept."""
    tune_args = [*args, f"hydra.run.dir={study_dir}", "search.workers=1"]
    if (study_dir / "study.yaml").is_file() and _study_command(study_dir) != ["cnnlab-tune", *tune_args]:
        shutil.rmtree(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cnnlab.cli.tune", *tune_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    except KeyboardInterrupt:  # Ctrl-C reached the study too: it records its interrupted trial and stops
        raise TrainingStopped("stopped by SIGINT during the search", signal.SIGINT) from None
    (study_dir / "lab_tune.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode > 128 or proc.returncode < 0:  # the study was stopped by a signal
        signum = proc.returncode - 128 if proc.returncode > 128 else -proc.returncode
        raise TrainingStopped(f"stopped by {signal.Signals(signum).name} during the search", signum)
    if proc.returncode not in (0, 1):
        raise RunError(f"cnnlab-tune failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
    return _best_trial(study_dir)


def _study_command(study_dir: Path) -> list[str] | None:
    saved = read_yaml(study_dir / "study.yaml")
    command = saved.get("command") if isinstance(saved, dict) else None
    return [str(c) for c in command] if isinstance(command, list) else None


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
