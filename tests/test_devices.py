"""Device setup decisions: the memory layout trainer.channels_last=auto picks, and the backend switches
(cuDNN autotuner, TF32) for a device and its flags. The CUDA branch is the pure decision fed a capability tuple."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cnnlab.engine.devices import (BF16, BF16_MIN_MACS, BackendSettings, ConvProfile, backend_settings,
                                   channels_last_choice, check_precision, configure_backends, cpu_bf16_flags,
                                   forward_macs, native_bf16, precision_choice, resolve_channels_last,
                                   resolve_precision)
from cnnlab.errors import ConfigError
from cnnlab.config.compose import CONFIG_DIR
from cnnlab.models import build_model
from omegaconf import OmegaConf


def zoo(name: str) -> nn.Module:
    """The zoo entry as its preset configures it."""
    in_channels, size = (1, (28, 28)) if name in ("lenet5", "mlp") else (3, (32, 32))
    return build_model(OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{name}.yaml"), in_channels, 10, size)


@pytest.fixture(scope="module")
def profiles():
    return {name: ConvProfile.of(zoo(name)) for name in ("lenet5", "mlp", "resnet20", "convnet")}


def test_auto_layout_is_nhwc_for_conv_models_on_cpu_and_cuda_and_never_without_convolutions(profiles):
    # CPU: measured faster for all three (docs/benchmarks.md); CUDA: cuDNN's standard choice
    for device in ("cpu", "cuda"):
        for name in ("lenet5", "resnet20", "convnet"):
            assert channels_last_choice("auto", profiles[name], device)[0] is True, (name, device)
    assert channels_last_choice("auto", profiles["resnet20"], "mps")[0] is False  # not measured there
    assert profiles["mlp"].convs == 0
    for device in ("cpu", "cuda", "mps"):
        use, why = channels_last_choice("auto", profiles["mlp"], device)
        assert use is False and "no 2-D convolution" in why


def test_an_explicit_layout_is_obeyed(profiles):
    assert channels_last_choice(True, profiles["mlp"], "cpu")[0] is True
    assert channels_last_choice(False, profiles["resnet20"], "cuda")[0] is False


def test_the_chosen_layout_is_logged_and_reaches_the_trainer(make_cfg, caplog):
    from cnnlab.run.lifecycle import prepare

    caplog.set_level(logging.INFO, logger="cnnlab")
    assert resolve_channels_last("auto", zoo("mlp"), torch.device("cpu")) is False
    assert "memory layout: NCHW (auto: the model has no 2-D convolution)" in caplog.text
    run = prepare(make_cfg("data=digits", "data.input_size=[16,16]", "model=lenet5", "logger=none",
                           "trainer.summary=none", "trainer.device=cpu"), overrides=[])
    assert "memory layout: channels_last (NHWC) (auto: convolutional model on cpu)" in caplog.text
    assert run.trainer.options.channels_last is True
    conv = run.model.features[3].weight  # C3, 6 input maps (with one, both layouts are the same)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


@pytest.mark.parametrize("capability,tf32,deterministic,expected", [
    ((9, 0), True, False, BackendSettings(cudnn_benchmark=True, tf32=True)),     # Hopper
    ((8, 0), True, True, BackendSettings(cudnn_benchmark=False, tf32=True)),     # Ampere, deterministic kernels
    ((8, 6), False, False, BackendSettings(cudnn_benchmark=True, tf32=False)),   # trainer.tf32=false
    ((7, 5), True, False, BackendSettings(cudnn_benchmark=True, tf32=False)),    # Turing: no TF32 units
])
def test_cuda_backend_switches(capability, tf32, deterministic, expected):
    assert backend_settings("cuda", capability, deterministic=deterministic, tf32=tf32) == expected


def test_cpu_leaves_the_backend_switches_alone():
    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    assert configure_backends(torch.device("cpu"), deterministic=False, tf32=True) == BackendSettings()
    after = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    assert after == before
    assert backend_settings("mps", None, deterministic=False, tf32=True) == BackendSettings()


def test_channels_last_takes_auto_true_false_only(make_cfg):
    from cnnlab.errors import ConfigError
    from cnnlab.run.validate import validate

    for value in ("auto", "true", "false"):
        validate(make_cfg(f"trainer.channels_last={value}"), "train")
    with pytest.raises(ConfigError, match="trainer.channels_last='sometimes' is not accepted; choose one of auto"):
        validate(make_cfg("trainer.channels_last=sometimes"), "train")


# ---- trainer.precision=auto ----
X86 = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw avx512_bf16 amx_tile\n"


def test_bf16_units_are_read_from_the_cpu_flags():
    assert cpu_bf16_flags(X86) == ["avx512_bf16"]
    assert cpu_bf16_flags(X86.replace("amx_tile", "amx_tile amx_bf16")) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n") == ["bf16"]  # aarch64 (Graviton 3)
    assert cpu_bf16_flags("flags\t\t: fpu sse avx512f avx512bw\n") == []  # AVX-512 without BF16: emulated, slower
    assert cpu_bf16_flags("") == []


@pytest.mark.parametrize("native,macs,chosen,says", [
    (True, 40_600_000, "bf16", "native on this device (where) and the model is large enough (40.6 M"),
    (True, 416_520, "32", "too small to gain from bf16 (0.4 M multiply-accumulates per sample, below 2 M)"),
    (True, BF16_MIN_MACS, "bf16", "large enough"),
    (True, None, "32", "size could not be measured"),
    (False, 40_600_000, "32", "auto: fp32, where"),
])
def test_auto_precision_wants_a_native_bf16_unit_and_a_model_large_enough_to_gain(native, macs, chosen, says):
    precision, why = precision_choice("auto", native=native, where="where", macs=macs)
    assert precision.name == chosen and says in why
    assert precision.use_scaler is False  # fp16 and its scaler stay opt-in


def test_auto_keeps_fp32_for_models_with_local_response_normalisation():
    """AlexNet's LRN: the one family where bf16's accuracy did not hold (docs/benchmarks.md, accuracy parity)."""
    precision, why = precision_choice("auto", native=True, where="", macs=182_000_000, lrn=True)
    assert precision.name == "32" and "local response normalisation" in why
    assert resolve_precision("auto", torch.device("cpu"), zoo("alexnet_small"), (3, 32, 32))[0].name == "32"


def test_precision_choice_decides_auto_only():
    with pytest.raises(ValueError, match="decides trainer.precision=auto, not 'bf16'"):
        precision_choice("bf16", native=True, where="", macs=1)


def test_explicit_precisions_are_obeyed_or_refused():
    cpu = torch.device("cpu")
    assert resolve_precision("32", cpu)[0].name == "32" and resolve_precision(32, cpu)[0].name == "32"
    assert resolve_precision("bf16", cpu, zoo("lenet5"), (1, 28, 28)) == (BF16, "trainer.precision=bf16")
    with pytest.raises(ConfigError, match="fp16 runs on CUDA only"):
        check_precision("fp16", cpu)
    check_precision("auto", cpu)  # auto always runs, on anything


def test_forward_macs_counts_one_sample_and_leaves_the_model_and_random_state_alone():
    model = zoo("lenet5").train()
    state = torch.get_rng_state()
    assert forward_macs(model, (1, 28, 28), torch.device("cpu")) == 416_520  # the model summary's count
    assert model.training and torch.equal(torch.get_rng_state(), state)
    assert forward_macs(model, (3, 28, 28), torch.device("cpu")) is None  # a forward pass that fails: unknown


@pytest.mark.integration  # a whole run: environment.json asks git for the commit
def test_auto_runs_as_its_choice_would_and_records_it(make_cfg, caplog):
    """ResNet-20 (10 M MACs at 16x16) trains in bf16 where the CPU has a bf16 unit, in fp32 elsewhere; the run is the
    same as with that precision set explicitly, and environment.json / metrics.json say what ran and why."""
    import json

    from cnnlab.run.lifecycle import train

    caplog.set_level(logging.INFO, logger="cnnlab")
    native = bool(cpu_bf16_flags())
    common = ("model=resnet20", "data=shapes", "data.num_samples=400", "data.input_size=[16,16]", "trainer.max_epochs=1",
              "trainer.limit_train_batches=2", "trainer.device=cpu", "logger=none", "trainer.summary=none")
    auto = train(make_cfg(*common, "trainer.precision=auto", run="auto"))
    expected = "bf16" if native else "32"
    explicit = train(make_cfg(*common, f"trainer.precision={expected}", run="explicit"))
    assert auto["precision"] == explicit["precision"] == expected
    assert auto["best_val/loss"] == explicit["best_val/loss"] and auto["test/loss"] == explicit["test/loss"]
    recorded = json.loads((Path(auto["run_dir"]) / "environment.json").read_text())["precision"]
    assert recorded["setting"] == "auto" and recorded["chosen"] == expected
    assert f"precision: {'bf16 autocast' if native else 'fp32'} (auto: " in caplog.text


@pytest.mark.parametrize("capability,native", [((8, 0), True), ((9, 0), True), ((7, 5), False)])
def test_auto_reads_a_gpus_native_bf16_from_its_compute_capability(monkeypatch, capability, native):
    """The CUDA half of auto, fed what an A100 / H100 / T4 reports (no GPU here)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: capability >= (8, 0))
    assert native_bf16(torch.device("cuda")) == (native, f"GPU, compute capability {capability[0]}.{capability[1]}")
    assert native_bf16(torch.device("mps"))[0] is False
