"""Choosing the device and the settings that go with it: mixed precision, memory layout, backend switches."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError

log = logging.getLogger("cnnlab")

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

    def autocast(self, device_type: str):
        """The context a forward pass runs in: torch.autocast at this dtype, or (full precision) one reusable
        no-op context for every step."""
        if self.autocast_dtype is None:
            return _FULL_PRECISION
        return torch.autocast(device_type, dtype=self.autocast_dtype)


_FULL_PRECISION = contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> Precision:
    precision = str(precision).lower()
    if precision in ("32", "fp32", "32-true"):
        return Precision(None, False)
    if precision == "bf16":
        # native support only (compute capability >= 8.0): torch also reports bf16 on older GPUs, emulated, slowly
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ConfigError("trainer.precision=bf16 but this GPU has no native bfloat16 support (compute capability "
                              "below 8.0, e.g. V100, T4); use fp16 or 32")
        if device.type == "mps":
            raise ConfigError("trainer.precision=bf16 is not supported on mps; use 32")
        return Precision(torch.bfloat16, False)
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"trainer.precision=fp16 runs on CUDA only here (got {device.type}): on CPU, torch's "
                              "fp16 autocast is many times slower than fp32; use bf16 on CPU, or 32")
        return Precision(torch.float16, True)
    raise ValueError(f"unknown precision {precision!r}")  # the schema (cnnlab.config.fields.Precision) refuses it first


# ---- memory layout (trainer.channels_last) ----
@dataclass(frozen=True)
class ConvProfile:
    """What the layout decision looks at in a model: its 2-D convolutions."""

    convs: int

    @classmethod
    def of(cls, model: nn.Module) -> ConvProfile:
        return cls(sum(isinstance(m, nn.Conv2d) for m in model.modules()))


# Where `auto` turns NHWC on for a model with Conv2d layers; MPS, not measured, keeps NCHW. The measurements:
# docs/benchmarks.md, "Device defaults".
NHWC_DEVICES = ("cuda", "cpu")


def channels_last_choice(setting: bool | str, profile: ConvProfile, device_type: str) -> tuple[bool, str]:
    """(use NHWC, why) for trainer.channels_last = auto | true | false; a pure decision, for tests."""
    if setting is True or setting is False:
        return setting, f"trainer.channels_last={str(setting).lower()}"
    if profile.convs == 0:
        return False, "auto: the model has no 2-D convolution"
    if device_type in NHWC_DEVICES:
        return True, f"auto: convolutional model on {device_type}"
    return False, f"auto: NHWC not measured faster on {device_type}"


def resolve_channels_last(setting: bool | str, model: nn.Module, device: torch.device) -> bool:
    """Decide the layout for this model and device, and log the choice."""
    use, why = channels_last_choice(setting, ConvProfile.of(model), device.type)
    log.info("memory layout: %s (%s)", "channels_last (NHWC)" if use else "NCHW", why)
    return use


# ---- backend switches (cuDNN autotuner, TF32) ----
@dataclass(frozen=True)
class BackendSettings:
    """What configure_backends sets; None = left as torch has it."""

    cudnn_benchmark: bool | None = None
    tf32: bool | None = None


def backend_settings(device_type: str, capability: tuple[int, int] | None, *, deterministic: bool,
                     tf32: bool) -> BackendSettings:
    """The decision, apart from torch: cuDNN autotuning unless deterministic kernels are asked for; TF32
    matmuls and convolutions on GPUs that have TF32 units (compute capability 8.0, Ampere, and later)."""
    if device_type != "cuda":
        return BackendSettings()  # CPU and MPS: these switches do nothing there
    has_tf32 = capability is not None and capability >= (8, 0)
    return BackendSettings(cudnn_benchmark=not deterministic, tf32=tf32 and has_tf32)


def configure_backends(device: torch.device, *, deterministic: bool, tf32: bool) -> BackendSettings:
    """Apply backend_settings for this device (after seeding.seed_everything, which sets deterministic mode)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    settings = backend_settings(device.type, capability, deterministic=deterministic, tf32=tf32)
    if settings.cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = settings.cudnn_benchmark
    if settings.tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
        torch.set_float32_matmul_precision("high" if settings.tf32 else "highest")
        log.info("cuDNN autotuner %s, TF32 %s (compute capability %d.%d)", "on" if settings.cudnn_benchmark
                 else "off", "on" if settings.tf32 else "off", *capability)
    return settings
