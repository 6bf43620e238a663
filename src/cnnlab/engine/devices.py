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

    @property
    def name(self) -> str:
        """The trainer.precision value that runs this way: "32", "bf16" or "fp16"."""
        return {None: "32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self, device_type: str):
        """The context a forward pass runs in: torch.autocast at this dtype, or (full precision) one reusable
        no-op context for every step."""
        if self.autocast_dtype is None:
            return _FULL_PRECISION
        return torch.autocast(device_type, dtype=self.autocast_dtype)


_FULL_PRECISION = contextlib.nullcontext()
FULL = Precision(None, False)
BF16 = Precision(torch.bfloat16, False)
FP16 = Precision(torch.float16, True)

# trainer.precision=auto turns bf16 autocast on for models of at least this many multiply-accumulates per sample
# (forward pass) on a device that computes bf16 natively. Measured on a CPU with AVX512-BF16 (docs/benchmarks.md,
# "bf16 autocast on CPU"): LeNet-5 at 0.4 M gains nothing that is outside the noise (1.07x), the 6 M ConvNet 1.58x,
# and every larger zoo model 1.4-2.6x.
BF16_MIN_MACS = 2_000_000
# /proc/cpuinfo flags of CPUs with bf16 arithmetic units: x86 AMX and AVX-512 BF16, Arm's BF16 extension. Without
# them oneDNN emulates bf16, slower than fp32.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bf16 flags (CPU_BF16_FLAGS) this CPU reports in /proc/cpuinfo (or in the text given); [] where the file
    does not exist (macOS, Windows: bf16 is then not known to be native, and auto keeps fp32)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 | aarch64
            flags = value.split()
            return [flag for flag in CPU_BF16_FLAGS if flag in flags]
    return []


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether the device computes bf16 natively, what says so) for trainer.precision=auto."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return native, f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        return bool(flags), f"CPU flags {', '.join(flags)}" if flags else "the CPU reports no bf16 unit"
    return False, f"bf16 not supported on {device.type}"


def precision_choice(setting: str, *, native: bool, where: str, macs: int | None,
                     lrn: bool = False) -> tuple[Precision, str]:
    """(how to run, why) for trainer.precision=auto on a device that computes bf16 natively or not (`where` says
    what told), for a model of `macs` multiply-accumulates per sample, with local response normalisation or not
    (`lrn`); a pure decision, for tests. Explicit settings go through resolve_precision."""
    if str(setting).lower() != "auto":
        raise ValueError(f"precision_choice decides trainer.precision=auto, not {setting!r}")
    if not native:
        return FULL, f"auto: fp32, {where}"
    if lrn:  # the one model family where the parity table (docs/benchmarks.md) did not hold
        return FULL, ("auto: fp32, the model has local response normalisation, where bf16 trained below fp32 in "
                      "cnnlab's measurements (AlexNet)")
    if macs is None:
        return FULL, "auto: fp32, the model's size could not be measured"
    size = f"{macs / 1e6:,.1f} M multiply-accumulates per sample"
    if macs < BF16_MIN_MACS:
        return FULL, f"auto: fp32, the model is too small to gain from bf16 ({size}, below {BF16_MIN_MACS / 1e6:g} M)"
    return BF16, f"auto: bf16 autocast, native on this device ({where}) and the model is large enough ({size})"


def forward_macs(model: nn.Module, input_shape: tuple[int, ...], device: torch.device) -> int | None:
    """Multiply-accumulates of one sample's forward pass (torch's FlopCounterMode: convolutions and matrix
    products, FLOPs / 2), run in eval mode without gradients, leaving the model's mode and the random state as
    they were; None if the forward pass fails."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), counter:
            model.eval()
            model(torch.zeros(1, *input_shape, device=device))
    except Exception as bad:  # the dry run at build time passed; never fatal, auto then keeps fp32
        log.debug("forward_macs failed: %s", bad)
        return None
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse an explicit precision this device cannot run, before any data is loaded (auto always runs)."""
    if str(precision).lower() != "auto":
        resolve_precision(precision, device)


def resolve_precision(precision: str, device: torch.device, model: nn.Module | None = None,
                      input_shape: tuple[int, ...] | None = None, *, announce: bool = False) -> tuple[Precision, str]:
    """(how the forward pass runs, why) for trainer.precision; auto looks at the device and at `model` (on the
    device, with inputs of `input_shape`). announce: log the choice."""
    setting = str(precision).lower()
    if setting == "auto":
        native, where = native_bf16(device)
        macs = forward_macs(model, input_shape, device) if native and model is not None else None
        lrn = model is not None and any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
        chosen, why = precision_choice(setting, native=native, where=where, macs=macs, lrn=lrn)
    else:
        chosen, why = _explicit_precision(setting, device), f"trainer.precision={precision}"
    if announce:
        log.info("precision: %s (%s)", {"32": "fp32", "bf16": "bf16 autocast",
                                        "fp16": "fp16 autocast + gradient scaler"}[chosen.name], why)
    return chosen, why


def _explicit_precision(precision: str, device: torch.device) -> Precision:
    if precision in ("32", "fp32", "32-true"):
        return FULL
    if precision == "bf16":
        # native support only (compute capability >= 8.0): torch also reports bf16 on older GPUs, emulated, slowly
        if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ConfigError("trainer.precision=bf16 but this GPU has no native bfloat16 support (compute capability "
                              "below 8.0, e.g. V100, T4); use fp16 or 32")
        if device.type == "mps":
            raise ConfigError("trainer.precision=bf16 is not supported on mps; use 32")
        return BF16
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"trainer.precision=fp16 runs on CUDA only here (got {device.type}): on CPU, torch's "
                              "fp16 autocast is many times slower than fp32; use bf16 on CPU, or 32")
        return FP16
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
