"""Choosing the device and the mixed-precision settings that go with it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.errors import ConfigError



def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is not there is an error, not a fallback.

    `key` is how the user set it (trainer.device=, or a command's --device), so that errors name it that way.
    """
    name = str(name).strip().lower()
    says, choose = (f"{key}={name}", f"{key}=auto or cpu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{says} but CUDA is not available on this machine "
                f"(torch {torch.__version__}, {torch.cuda.device_count()} GPUs visible); use {choose}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{says} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not _mps_available():
        raise ConfigError(f"{says} but MPS is not available; use {choose}")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key}={name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: autocast dtype (None = full fp32) and whether a gradient scaler is needed."""

    autocast_dtype: torch.dtype | None
    use_scaler: bool

    @property
    def enabled(self) -> bool:
        return self.autocast_dtype is not None


def resolve_precision(precision: str, device: torch.device) -> Precision:
    precision = str(precision).lower()
    if precision in ("32", "fp32", "32-true"):
        return Precision(None, False)
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("trainer.precision=bf16 but this GPU has no bfloat16 support; use fp16 or 32")
        if device.type == "mps":
            raise ConfigError("trainer.precision=bf16 is not supported on mps; use 32")
        return Precision(torch.bfloat16, False)
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"trainer.precision=fp16 needs a CUDA device (got {device.type}); "
                              "use bf16 on CPU, or 32")
        return Precision(torch.float16, True)
    raise ValueError(f"unknown precision {precision!r}")  # the schema (cnnlab.schema.Precision) refuses it first
