"""Lessons of the lab book: one YAML file per lesson in configs/lab/, read and checked here.

A lesson compares settings ("arms") of one training recipe. Each arm is a list of cnnlab-train overrides on top
of the lesson's `common` ones; every arm runs once per seed. `quick` overrides (and the first seed only) make
the seconds-long smoke run of `cnnlab-lab <lesson> --quick`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cnnlab.config.compose import config_dir
from cnnlab.errors import ConfigError

# What a lesson may add to the comparison of its arms, each through an existing cnnlab command's code:
#   lr_finder  the LR range test of cnnlab-doctor on the lesson's `extra_arm`: its suggested rate
#   gradients  cnnlab-doctor's per-layer gradient norms at initialisation, for every arm
#   filters    cnnlab-explain's learned filters and feature maps of the `extra_arm`'s first seed
#   search     every arm is a cnnlab-tune study (its overrides are cnnlab-tune's, e.g. the sampler), one per seed
EXTRAS = ("lr_finder", "gradients", "filters", "search")

# Columns a lesson's table may show: metrics.json keys, the last epoch's logged scalars, and derived values.
COLUMNS = ("test/acc", "test/loss", "val/acc_best", "best_val", "val/acc", "val/loss", "train/acc", "train/loss",
           "gap", "params", "epochs", "best_epoch", "wall_time_s",
           "trials", "pruned", "epochs_trained")  # the last three: extra=search, per study


class Series(BaseModel):
    """A lesson's own picture: `column` (mean ± std over seeds) against a number, one line per group of arms."""

    model_config = ConfigDict(extra="forbid")

    x_label: str
    column: Literal[COLUMNS]
    lines: dict[str, dict[float, str]] = Field(min_length=1)   # line name -> {x: arm}
    log_x: bool = True


class Lesson(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    title: str
    question: str
    expectation: str                                  # the textbook result, stated before running
    discussion: str = ""                              # what the recorded result shows, written after reading it
    common: list[str] = Field(default_factory=list)   # overrides for every arm
    quick: list[str] = Field(default_factory=list)    # extra overrides of the --quick smoke run
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    arms: dict[str, list[str]] = Field(min_length=1)
    columns: list[Literal[COLUMNS]] = Field(default_factory=lambda: ["test/acc", "val/acc_best", "train/loss"],
                                            min_length=1)
    curves: list[str] = Field(default_factory=lambda: ["val/acc", "train/loss"])
    # A source run trained once (seed of the first seed) before the arms, e.g. the pretraining of a transfer
    # lesson; arms refer to its run dir as {source}.
    source: list[str] = Field(default_factory=list)
    series: Optional[Series] = None
    extra: Optional[Literal[EXTRAS]] = None
    extra_arm: Optional[str] = None                   # the arm an extra looks at (default: the first)


def lab_dir() -> Path:
    return config_dir() / "lab"


def lesson_names() -> list[str]:
    return sorted(p.stem for p in lab_dir().glob("*.yaml"))


def load_lesson(name: str) -> Lesson:
    """The lesson `name` (configs/lab/<name>.yaml); an unknown name lists the valid ones."""
    path = lab_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no lesson {name!r}; choose one of: {', '.join(lesson_names())}")
    try:
        lesson = Lesson(**(yaml.safe_load(path.read_text()) or {}), name=name)
    except ValidationError as bad:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in bad.errors())
        raise ConfigError(f"{path}: {problems}") from None
    named = [arm for line in (lesson.series.lines.values() if lesson.series else ()) for arm in line.values()]
    unknown = [arm for arm in named if arm not in lesson.arms]
    if unknown:
        raise ConfigError(f"{path}: series names arms that do not exist: {unknown}")
    if lesson.extra_arm is not None and lesson.extra_arm not in lesson.arms:
        raise ConfigError(f"{path}: extra_arm={lesson.extra_arm!r} is not one of the arms {list(lesson.arms)}")
    return lesson
