"""The config schema: every key's type, allowed choices and range, declared once; here the whole config of
each command (CONFIGS) and the sections only one command has (doctor, search).

The sections live by kind: `cnnlab.config.fields` (section bases, bounded numbers, choice lists),
`cnnlab.config.data_schema` (data sources, augment), `cnnlab.config.training_schema` (optimizer, scheduler,
trainer, logger, paths, finetune).

The YAML files under configs/ are the documented presets; these pydantic models say what a composed config
(or a config saved in a checkpoint) may hold. `cnnlab.config.checks` validates against them before anything
is built, reports every problem at once, and turns each into one line naming the key. pydantic rather than
Hydra's structured configs: it checks ranges, `Literal` choices and NaN/inf, and reports all errors with
their location, where OmegaConf's dataclass schema has no ranges or `Literal`s and stops Hydra at the first
wrong type with exit status 1.

A field's `description` is the sentence its error message ends with ("must be a positive integer"); fields
without one get a sentence made from their type and bounds. Choice lists live in `cnnlab.config.fields` as
`Literal` types; the modules that act on a choice import them from there (`typing.get_args(Loss)`).

Sections whose keys belong to a class rather than to cnnlab are open: `model` (the zoo entry's builder
signature), `optimizer` and `scheduler` (the torch class's signature, beyond the keys typed here). Rules that
span several keys (mean/std length vs in_channels, warm-up vs max_epochs, ...) live in `cnnlab.run.validate`.
"""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field

from cnnlab.config.data_schema import Augment
from cnnlab.config.fields import (Direction, NonNegativeInt, ParamType, Positive, PositiveInt, PrunerName, SamplerName,
                                  Section, Seed, Split, SummaryFormat, TtaMode, number, pair)
from cnnlab.config.training_schema import Finetune, Logger, Paths, Trainer


# ---- whole configs, one per command ----
class TrainConfig(Section):
    task_name: str
    seed: Seed
    trusted_targets: list[str]
    trusted_repos: list[str]
    finetune: Optional[Finetune] = None
    data: dict        # checked against DATA_SOURCES[data.name]
    model: dict       # checked against the zoo entry's builder
    augment: Augment
    optimizer: dict   # checked against Optimizer and the torch class
    scheduler: dict   # checked against Scheduler and the torch class
    trainer: Trainer
    logger: Logger
    paths: Paths


class EvalConfig(TrainConfig):
    ckpt: Optional[str] = None
    split: Split
    tta: TtaMode = "none"
    tta_resize: Annotated[Optional[PositiveInt | Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]],
                          Field(description="must be N (the shorter side), [height, width] with positive integers, "
                                            "or null (the input size x 256/224)")] = None


class SummaryConfig(TrainConfig):
    format: SummaryFormat
    input_size: Annotated[Optional[int | list[int]], Field(
        description="must be N (a square N x N input), [H, W] or [C, H, W] with positive integers")] = None
    num_classes: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None
    output: Optional[str] = None


# ---- cnnlab-doctor: the checklist's budgets and thresholds (configs/doctor.yaml documents each key) ----
Fraction01 = number(float, gt=0, le=1)


class OverfitCheck(Section):
    batches: PositiveInt
    steps: PositiveInt
    target_acc: Fraction01


class LrRangeCheck(Section):
    enabled: bool
    steps: Annotated[int, Field(ge=10, description="must be an integer >= 10")]
    start_lr: Positive
    end_lr: Positive


class GradientCheck(Section):
    steps: PositiveInt
    vanishing_ratio: Fraction01
    exploding_norm: Positive
    update_ratio_low: Positive
    update_ratio_high: Positive
    dead_fraction: Fraction01
    saturated_fraction: Fraction01


StdRange = pair(Annotated[float, Field(gt=0)], "must be [low, high] with 0 < low < high, e.g. [0.5, 2.0]")


class DataCheck(Section):
    max_images: PositiveInt
    imbalance_ratio: Annotated[float, Field(ge=1, description="must be a number >= 1")]
    mean_tolerance: Positive
    std_range: StdRange
    grid_images: PositiveInt


class Doctor(Section):
    init_loss_tolerance: Positive
    overfit: OverfitCheck
    lr_range: LrRangeCheck
    gradients: GradientCheck
    data: DataCheck


class DoctorConfig(TrainConfig):
    doctor: Doctor


# ---- cnnlab-tune: the search section (rules between its keys live in cnnlab.search.space) ----
Scalar = Optional[bool | int | float | str]


class SearchParam(Section):
    key: Annotated[str, Field(min_length=1, description="must be a config key (optimizer.lr) or group (model)")]
    type: ParamType
    low: Optional[int | float] = None
    high: Optional[int | float] = None
    log: bool = False
    step: Annotated[Optional[int | float], Field(gt=0, description="must be a positive number, or null")] = None
    choices: Annotated[Optional[list[Scalar]], Field(min_length=1, description="must be a non-empty list")] = None


class Sampler(Section):
    name: SamplerName
    n_startup_trials: NonNegativeInt = 10  # tpe: random trials before the model of good and bad values is used


class Pruner(Section):
    name: PrunerName
    min_resource: PositiveInt = 1         # epochs every trial trains before it can be pruned
    reduction_factor: Annotated[int, Field(ge=2, description="must be an integer >= 2")] = 3  # hyperband, asha
    min_early_stopping_rate: NonNegativeInt = 0  # asha: the first rung is min_resource * reduction_factor**rate
    n_startup_trials: NonNegativeInt = 5  # median: trials that finish before any is pruned


class Objective(Section):
    metric: Annotated[Optional[str], Field(pattern=r"^val/", description="must be a validation metric such as "
                                                                        "val/acc or val/loss, or null")] = None
    direction: Direction


class Search(Section):
    study_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description=(
        "must be a name of letters, digits, '_', '.' and '-' (it names the study dir)"))]
    storage: Optional[str] = None
    n_trials: PositiveInt
    timeout: Annotated[Optional[float], Field(gt=0, description="must be a positive number of seconds, or null")] = None
    seed: Seed
    workers: PositiveInt
    retry_interrupted: bool
    space: Annotated[dict[str, SearchParam], Field(min_length=1, description="must name at least one parameter")]
    sampler: Sampler
    pruner: Pruner
    objective: Objective
    overrides: list[str] = []


class TuneConfig(TrainConfig):
    search: Search


CONFIGS: dict[str, type[TrainConfig]] = {"train": TrainConfig, "eval": EvalConfig, "summary": SummaryConfig,
                                         "tune": TuneConfig, "doctor": DoctorConfig}
