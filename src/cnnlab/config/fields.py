"""The schema's building blocks: closed and open sections, bounded numbers with their message, and every choice
list (a `Literal`) that the modules acting on a choice import from here (`typing.get_args(Loss)`)."""

from __future__ import annotations

from typing import Annotated, Literal

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


def pair(item, description: str):
    """Exactly two values ([height, width], [low, high]), each an `item`."""
    return Annotated[list[item], Field(min_length=2, max_length=2, description=description)]


# [height, width] of an image
Size = pair(Annotated[int, Field(gt=0)], "must be [height, width] with positive integers")


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
PrecisionName = Literal["auto", "32", "bf16", "fp16"]
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
PrunerName = Literal["none", "median", "hyperband", "asha"]
Direction = Literal["auto", "maximize", "minimize"]
ParamType = Literal["float", "int", "categorical"]
