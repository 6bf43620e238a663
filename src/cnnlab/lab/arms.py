"""The runs of a lesson's arms: the overrides each is made with, and what the runs of each arm gave."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.lab.lessons import Lesson
from cnnlab.run.records import RunRecord

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
