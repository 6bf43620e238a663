"""The config schema: every key's type, allowed choices and range, declared once.

The YAML files under configs/ are the documented presets; these pydantic models say what a composed config
(or a config saved in a checkpoint) may hold. `cnnlab.config.checks` validates against them before anything
is built, reports every problem at once, and turns each into one line naming the key. pydantic rather than
Hydra's structured configs: it checks ranges, `Literal` choices and NaN/inf, and reports all errors with
their location, where OmegaConf's dataclass schema has no ranges or `Literal`s and stops Hydra at the first
wrong type with exit status 1.

A field's `description` is the sentence its error message ends with ("must be a positive integer"); fields
without one get a sentence made from their type and bounds. Choice lists live here as `Literal` types; the
modules that act on a choice import them from here (`typing.get_args(Loss)`).

Sections whose keys belong to a class rather than to cnnlab are open: `model` (the zoo entry's builder
signature), `optimizer` and `scheduler` (the torch class's signature, beyond the keys typed here). Rules that
span several keys (mean/std length vs in_channels, warm-up vs max_epochs, ...) live in `cnnlab.run.validate`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class Section(BaseModel):
    """A closed config section: unknown keys, wrong types, NaN and infinity are refused."""

    # defer_build: a model's validator is built on first use, so a run pays only for the sections it checks
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, defer_build=True)


class OpenSection(Section):
    """A section whose other keys are a class's arguments (checked against its signature elsewhere)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False, defer_build=True)


def _bounds_phrase(kind: type, gt=None, ge=None, lt=None, le=None) -> str:
    if kind is int and gt == 0 and lt is le is None:
        return "must be a positive integer"
    if kind is int and ge == 0 and lt is le is None:
        return "must be a non-negative integer"
    low = gt if gt is not None else ge
    high = lt if lt is not None else le
    if low is not None and high is not None:
        return f"must be in {'(' if gt is not None else '['}{low}, {high}{')' if lt is not None else ']'}"
    if low is not None:
        return f"must be {'>' if gt is not None else '>='} {low}"
    if high is not None:
        return f"must be {'<' if lt is not None else '<='} {high}"
    return "must be an integer" if kind is int else "must be a number"


def number(kind: type = float, *, gt=None, ge=None, lt=None, le=None, say: str | None = None):
    """A finite int or float with optional bounds; `say` replaces the generated message."""
    return Annotated[kind, Field(gt=gt, ge=ge, lt=lt, le=le, description=say or _bounds_phrase(kind, gt, ge, lt, le))]


def _int_as_text(value):
    """`trainer.precision=32` reaches the config as the int 32; the choice is the text "32"."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


PositiveInt = number(int, gt=0)
NonNegativeInt = number(int, ge=0)
Positive = number(float, gt=0)
NonNegative = number(float, ge=0)
Fraction = number(float, ge=0, lt=1)         # [0, 1)
Probability = number(float, ge=0, le=1)      # [0, 1]
MixAlpha = number(float, ge=0, say="must be a number >= 0 (0 turns it off)")
GradClip = number(float, ge=0, say="must be >= 0 (0 disables clipping)")
Seed = number(int, ge=-2**63, lt=2**64, say="must be an integer in [-2**63, 2**64)")  # what torch.manual_seed takes
OpenFraction = number(float, gt=0, lt=1)     # (0, 1)
StartFactor = number(float, gt=0, le=1)      # (0, 1]

# ---- choices (each list exists only here) ----
Progress = Literal["auto", "bar", "plain", "none"]
MonitorMode = Literal["auto", "min", "max"]
PrecisionName = Literal["32", "bf16", "fp16"]
Precision = Annotated[PrecisionName, BeforeValidator(_int_as_text)]
Loss = Literal["cross_entropy", "bce", "mse"]
NonFinite = Literal["stop", "skip", "off"]
TestWith = Literal["best", "last"]
SummaryMode = Literal["full", "totals", "none"]
Interval = Literal["epoch", "step"]
ResizeMode = Literal["center_crop", "stretch"]
LoaderKind = Literal["auto", "tensor", "dataloader"]
DataSampler = Literal["random", "balanced"]
ExistingRun = Literal["refuse", "clear"]
Split = Literal["train", "val", "test"]
TtaMode = Literal["none", "flip", "five_crop", "ten_crop"]
SummaryFormat = Literal["table", "json"]
SamplerName = Literal["grid", "random", "tpe", "qmc"]
PrunerName = Literal["none", "median", "hyperband"]
Direction = Literal["auto", "maximize", "minimize"]
ParamType = Literal["float", "int", "categorical"]


# ---- data: one base that every data source's keys extend ----
class DataSplit(Section):
    val: Fraction
    test: Annotated[Optional[float], Field(ge=0, lt=1, description="must be in [0, 1), or null")] = None


class DataBase(Section):
    """Keys every data set has: what the model is fed, how it is split, batched and loaded."""

    name: str
    in_channels: PositiveInt
    num_classes: PositiveInt
    input_size: Annotated[list[Annotated[int, Field(gt=0)]], Field(
        min_length=2, max_length=2, description="must be [height, width] with positive integers")]
    classes: Annotated[Optional[list[str | int]], Field(description="must be a list of class names, or null")] = None
    class_subset: Annotated[Optional[list[Annotated[int, Field(ge=0)]]], Field(
        min_length=1, description="must be a list of class indices (integers >= 0), e.g. [0, 1, 2], or null")] = None
    mean: Annotated[Optional[list[float]], Field(
        description="must be a list of numbers, one per channel, or null to measure it on the training images")]
    std: Annotated[Optional[list[Annotated[float, Field(gt=0)]]], Field(
        description="must be positive numbers, one per channel, or null to measure them on the training images")]
    split: DataSplit
    batch_size: PositiveInt
    eval_batch_size: PositiveInt
    loader: LoaderKind
    num_workers: NonNegativeInt
    # configs saved before these keys existed have none
    sampler: DataSampler = "random"
    max_per_class: Annotated[Optional[Annotated[int, Field(gt=0)] | list[Annotated[int, Field(gt=0)]]], Field(
        description="must be a positive integer, a list of one positive integer per class, or null")] = None


class DownloadableData(DataBase):
    """torchvision's data sets, read from their files under `root`."""

    root: str
    download: bool


class FakeData(DataBase):
    num_samples: PositiveInt
    image_size: Annotated[list[Annotated[int, Field(gt=0)]], Field(
        min_length=2, max_length=2, description="must be [height, width] with positive integers")]
    generator_seed: int


class ShapesData(DataBase):
    num_samples: PositiveInt
    image_size: PositiveInt
    generator_seed: int
    noise: NonNegative


class ImageFolderData(DataBase):
    num_classes: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None
    root: Optional[str] = None
    train_root: Optional[str] = None
    val_root: Optional[str] = None
    test_root: Optional[str] = None
    resize_mode: ResizeMode
    in_memory: Annotated[Literal["auto"] | bool, Field(description="is not accepted; choose one of auto, true, false")]
    memory_limit_mb: Positive
    skip_unreadable: bool
    # configs saved before the decoded cache existed have neither
    cache: bool = True
    cache_dir: Annotated[Optional[str], Field(description="must be a folder path, or null for the default")] = None


class WebDatasetData(DataBase):
    """Tar shards streamed (cnnlab.data.stream): URLs or brace patterns, and the manifest cnnlab-shards wrote."""

    num_classes: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None
    train_shards: Annotated[str, Field(min_length=1, description="must name the training shards, e.g. "
                                       "/data/train-{000000..000099}.tar")]
    val_shards: Optional[str] = None
    test_shards: Optional[str] = None
    manifest: Optional[str] = None
    resize_mode: ResizeMode
    shuffle_buffer: NonNegativeInt


DOWNLOADABLE = ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10")
DATA_SOURCES: dict[str, type[DataBase]] = {
    "mnist_sample": DataBase, "digits": DataBase, "fake": FakeData, "shapes": ShapesData,
    "imagefolder": ImageFolderData, "webdataset": WebDatasetData, **{name: DownloadableData for name in DOWNLOADABLE},
}


# ---- augmentation ----
class Mix(Section):
    mixup_alpha: MixAlpha = 0.0
    cutmix_alpha: MixAlpha = 0.0
    prob: Probability = 1.0
    switch_prob: Probability = 0.5


class Augment(Section):
    name: Optional[str] = None
    transforms: Annotated[list[dict], Field(
        description="must be a list of transform entries (each with a _target_)")] = []
    mix: Optional[Mix] = None


# ---- optimizer and schedule: cnnlab's keys and the torch arguments worth typing ----
class Optimizer(OpenSection):
    target: Annotated[str, Field(alias="_target_")]
    partial: Annotated[bool, Field(alias="_partial_")] = True
    lr: Positive
    weight_decay: Annotated[Optional[float], Field(ge=0, description="must be >= 0")] = None
    momentum: Annotated[Optional[float], Field(ge=0, lt=1, description="must be in [0, 1)")] = None
    dampening: Optional[Fraction] = None
    nesterov: Optional[bool] = None
    betas: Annotated[Optional[list[Annotated[float, Field(ge=0, lt=1)]]], Field(
        min_length=2, max_length=2, description="must be [beta1, beta2], each in [0, 1)")] = None
    eps: Optional[Positive] = None
    alpha: Optional[Probability] = None
    amsgrad: Optional[bool] = None
    centered: Optional[bool] = None
    lr_decay: Optional[NonNegative] = None
    initial_accumulator_value: Optional[NonNegative] = None
    decay_norm_and_bias: bool = False  # cnnlab: false exempts biases and norm weights from weight decay


class Scheduler(OpenSection):
    target: Annotated[Optional[str], Field(alias="_target_")] = None
    interval: Interval = "epoch"
    warmup_epochs: NonNegativeInt = 0
    warmup_start_factor: StartFactor = 0.1
    step_size: Optional[PositiveInt] = None
    gamma: Optional[Positive] = None
    milestones: Annotated[Optional[list[Annotated[int, Field(gt=0)]]], Field(
        description="must be a list of positive epoch (or step) numbers")] = None
    T_max: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None
    eta_min: Optional[NonNegative] = None
    max_lr: Annotated[Optional[float], Field(gt=0, description="must be > 0, or null")] = None
    total_steps: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None
    pct_start: Optional[OpenFraction] = None
    anneal_strategy: Optional[Literal["cos", "linear"]] = None
    div_factor: Optional[Positive] = None
    final_div_factor: Optional[Positive] = None
    cycle_momentum: Optional[bool] = None
    mode: Optional[Literal["min", "max"]] = None
    factor: Optional[OpenFraction] = None
    patience: Optional[NonNegativeInt] = None
    threshold: Optional[NonNegative] = None
    min_lr: Optional[NonNegative] = None


# cnnlab's own keys in those two sections: not arguments of the torch class.
OPTIMIZER_OWN_KEYS = ("_target_", "_partial_", "decay_norm_and_bias")
SCHEDULER_OWN_KEYS = ("_target_", "interval", "warmup_epochs", "warmup_start_factor")


# ---- the training loop ----
class EarlyStopping(Section):
    enabled: bool
    patience: PositiveInt
    min_delta: NonNegative


class Checkpointing(Section):
    save_last: bool
    save_best: bool
    save_top_k: Annotated[int, Field(ge=0, description=(
        "must be an integer >= 0 (0 = off; k keeps the k best epochs' checkpoints)"))] = 0


AnnealStrategy = Literal["cos", "linear"]  # torch.optim.swa_utils.SWALR's anneal_strategy


class Ema(Section):
    enabled: bool = False
    decay: Annotated[float, Field(gt=0, lt=1, description="must be in (0, 1), e.g. 0.9998")] = 0.9998
    warmup: bool = True
    every_n_steps: PositiveInt = 1


class Swa(Section):
    enabled: bool = False
    start_epoch: Annotated[int, Field(gt=0, description=(
        "must be a positive integer: the first epoch whose end weights are averaged"))] = 1
    lr: Annotated[Optional[float], Field(gt=0, description="must be a positive number, or null")] = None
    anneal_epochs: NonNegativeInt = 5
    anneal_strategy: AnnealStrategy = "cos"


class Trainer(Section):
    max_epochs: PositiveInt
    limit_train_batches: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")]
    limit_val_batches: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None
    limit_test_batches: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None
    device: str
    precision: Precision
    channels_last: Annotated[Literal["auto"] | bool, Field(description="is not accepted; choose one of auto, true, false")]
    compile: bool
    grad_clip: GradClip
    accumulate_grad_batches: Annotated[int, Field(ge=1, description=(
        "must be a positive integer (1 = no accumulation: a step per batch)"))] = 1
    tf32: bool = True  # configs saved before these keys existed have none
    sync_batchnorm: bool = False
    dist_backend: Annotated[Literal["auto", "gloo", "nccl"], Field(
        description="is not accepted; choose one of auto, gloo, nccl")] = "auto"
    loss: Loss
    label_smoothing: Fraction
    topk: Annotated[list[Annotated[int, Field(gt=0)]], Field(
        min_length=1, description="must be a list of positive integers, e.g. [1, 5]")]
    deterministic: bool
    monitor: Annotated[str, Field(pattern=r"^val/", description="must be a validation metric such as val/loss or val/acc")]
    monitor_mode: MonitorMode
    early_stopping: EarlyStopping
    checkpoint: Checkpointing
    ema: Ema = Ema()  # configs saved before these keys existed have none
    swa: Swa = Swa()
    test_with: TestWith
    resume: Optional[str] = None
    progress: Progress
    log_every_n_steps: NonNegativeInt
    nonfinite: NonFinite
    handle_signals: bool
    summary: SummaryMode = "full"  # configs saved before the key existed have none
    class_weights: Annotated[Optional[Literal["auto"] | list[Annotated[float, Field(ge=0)]]], Field(
        description="must be null, auto, or a list of one weight >= 0 per class")] = None


class Logger(Section):
    enabled: bool
    histogram_every_n_epochs: NonNegativeInt
    images: bool
    hparams: bool
    graph: bool
    flush_secs: PositiveInt
    # configs saved before these keys existed have none
    projector: bool = False
    projector_max_samples: Annotated[int, Field(ge=1, le=10000, description="must be in [1, 10000]")] = 1000


class Paths(Section):
    output_root: str
    data_root: str
    output_dir: str
    existing_run: ExistingRun = "refuse"  # configs saved before the key existed have none


class Finetune(Section):
    checkpoint: Optional[str] = None
    freeze: Annotated[str | list[str], Field(
        description="must be none, backbone or a list of module-name prefixes")] = "none"
    backbone_lr_scale: Positive = 1.0
    unfreeze_after_epochs: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None


# ---- whole configs, one per command ----
class TrainConfig(Section):
    task_name: str
    seed: Seed
    trusted_targets: list[str]
    trusted_repos: list[str] = []
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
    warn_factor: Annotated[float, Field(gt=1, description="must be a number > 1")]


class GradientCheck(Section):
    steps: PositiveInt
    vanishing_ratio: Fraction01
    exploding_norm: Positive
    update_ratio_low: Positive
    update_ratio_high: Positive
    dead_fraction: Fraction01
    saturated_fraction: Fraction01


class DataCheck(Section):
    max_images: PositiveInt
    imbalance_ratio: Annotated[float, Field(ge=1, description="must be a number >= 1")]
    mean_tolerance: Positive
    std_range: Annotated[list[Annotated[float, Field(gt=0)]], Field(
        min_length=2, max_length=2, description="must be [low, high] with 0 < low < high, e.g. [0.5, 2.0]")]
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
    reduction_factor: Annotated[int, Field(ge=2, description="must be an integer >= 2")] = 3  # hyperband
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
