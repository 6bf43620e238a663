"""Running one lesson of the lab book and writing its page, as cnnlab-lab and cnnlab.lab do: the checks on where
the runs and the page go (before any arm trains), the arms x seeds, the page."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cnnlab.lab.lessons import Lesson

log = logging.getLogger("cnnlab.lab")


def run_and_write(lesson: Lesson, out_root: Path, quick: bool = False, overrides: list[str] = (),
                  page: Path | None = None, page_only: bool = False) -> Path:
    """Train the lesson's arms under <out_root>/<lesson>[-quick] (page_only: read the runs already there) and write
    its page there, or into `page`; returns the page's path."""
    # the runs' and the page's modules (torch, matplotlib) only when a lesson runs: `cnnlab-lab --list` stays light
    from cnnlab.lab.page import check_page_target, write_page
    from cnnlab.lab.runner import collect_lesson, lesson_dir, run_lesson
    from cnnlab.run.precheck import check_writable

    out = lesson_dir(Path(out_root), lesson, quick, existing=page_only)
    # before any arm trains: the page can be written where it goes, over nothing but an earlier page of the
    # lesson, and the disk there takes data; a --page refused leaves --out as it was (checked, and made, after it).
    # With --page-only nothing precedes the page's own (atomic) writes, which report a full disk themselves.
    if page:
        check_page_target(Path(page), lesson.name, f"--page={page}")
        if not page_only:
            check_writable(str(page), "--page", "the page")
    if not page_only:
        check_writable(str(out), "--out", "the lesson's runs")
    if not page:
        check_page_target(out, lesson.name, f"--out={out} (the page goes there; --page DIR puts it elsewhere)")
    if page_only:
        result, saved = collect_lesson(lesson, out)
        return write_page(result, Path(page) if page else out, saved)
    log.info("lesson %s: %s (%d arms x %d seeds)", lesson.name, lesson.title, len(lesson.arms),
             1 if quick else len(lesson.seeds))
    result = run_lesson(lesson, out, quick=quick, overrides=list(overrides))
    written = write_page(result, Path(page) if page else out, list(overrides))
    log.info("page: %s (%.1f minutes)", written, result.seconds / 60)
    return written


def console_progress():
    """The lab's progress lines on the console; the training runs' own messages only when they warn. Returns
    the function that puts the loggers back as they were (cnnlab-lab's main and cnnlab.lab run in-process in tests and notebooks)."""
    lab, runs = logging.getLogger("cnnlab.lab"), logging.getLogger("cnnlab")
    before = (lab.level, lab.propagate, runs.level)
    if not any(getattr(h, "lab_console", False) for h in lab.handlers):  # once per process (tests call main often)
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.lab_console = True
        lab.addHandler(handler)
    lab.setLevel(logging.INFO)
    lab.propagate = False
    runs.setLevel(logging.WARNING)

    def restore() -> None:
        lab.setLevel(before[0])
        lab.propagate = before[1]
        runs.setLevel(before[2])

    return restore
