"""The training sections of the schema: optimizer and scheduler (cnnlab's keys and the torch arguments worth
typing), the trainer loop with its early stopping, checkpoints and weight averages, logger (TensorBoard and
MLflow), paths and finetune."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import Field

from cnnlab.config.fields import (ExistingRun, Fraction, GradClip, Interval, Loss, MonitorMode, NonFinite,
                                  NonNegative, NonNegativeInt, OpenFraction, OpenSection, Positive, PositiveInt,
                                  Precision, Probability, Progress, Section, StartFactor, SummaryMode, TestWith)


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
        "must be an integer >= 0 (0 = off; k keeps the k best epochs' checkpoints)"))]


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
    limit_val_batches: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")]
    limit_test_batches: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")]
    device: str
    precision: Precision
    channels_last: Annotated[Literal["auto"] | bool, Field(description="is not accepted; choose one of auto, true, false")]
    compile: bool
    grad_clip: GradClip
    accumulate_grad_batches: Annotated[int, Field(ge=1, description=(
        "must be a positive integer (1 = no accumulation: a step per batch)"))]
    tf32: bool
    sync_batchnorm: bool
    dist_backend: Annotated[Literal["auto", "gloo", "nccl"], Field(
        description="is not accepted; choose one of auto, gloo, nccl")]
    loss: Loss
    label_smoothing: Fraction
    topk: Annotated[list[Annotated[int, Field(gt=0)]], Field(
        min_length=1, description="must be a list of positive integers, e.g. [1, 5]")]
    deterministic: bool
    monitor: Annotated[str, Field(pattern=r"^val/", description="must be a validation metric such as val/loss or val/acc")]
    monitor_mode: MonitorMode
    early_stopping: EarlyStopping
    checkpoint: Checkpointing
    ema: Ema
    swa: Swa
    bn_recalibrate: Annotated[int, Field(ge=0, description=(
        "must be a non-negative integer: the number of training batches over which batch-norm statistics are "
        "recomputed before each validation (0 = off)"))]
    test_with: TestWith
    resume: Optional[str] = None
    progress: Progress
    log_every_n_steps: NonNegativeInt
    nonfinite: NonFinite
    handle_signals: bool
    summary: SummaryMode
    class_weights: Annotated[Optional[Literal["auto"] | list[Annotated[float, Field(ge=0)]]], Field(
        description="must be null, auto, or a list of one weight >= 0 per class")]


class Mlflow(Section):
    enabled: bool
    tracking_uri: Annotated[Optional[str], Field(min_length=1, description=(
        "must be a tracking URI (http://host:5000, sqlite:///path.db, a folder), or null for the local store"))]
    experiment: Annotated[str, Field(min_length=1, description="must be an experiment name")]
    run_name: Optional[str]
    log_checkpoints: bool
    timeout_s: Positive


class Logger(Section):
    enabled: bool
    histogram_every_n_epochs: NonNegativeInt
    images: bool
    hparams: bool
    graph: bool
    flush_secs: PositiveInt
    projector: bool
    projector_max_samples: Annotated[int, Field(ge=1, le=10000, description="must be in [1, 10000]")]
    mlflow: Mlflow


class Paths(Section):
    output_root: str
    data_root: str
    output_dir: str
    existing_run: ExistingRun


class Finetune(Section):
    checkpoint: Optional[str] = None
    freeze: Annotated[str | list[str], Field(
        description="must be none, backbone or a list of module-name prefixes")] = "none"
    backbone_lr_scale: Positive = 1.0
    unfreeze_after_epochs: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None
