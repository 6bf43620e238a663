"""Device setup decisions: the memory layout trainer.channels_last=auto picks, and the backend switches
(cuDNN autotuner, TF32) for a device and its flags. The CUDA branch is the pure decision fed a capability tuple."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from cnnlab.engine.devices import (BackendSettings, ConvProfile, backend_settings, channels_last_choice, configure_backends,
                            resolve_channels_last)
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
