"""The model zoo: a registry from the names used on the command line (`model=<name>`) to builders.

Every builder takes the data's shape (in_channels, num_classes, input_size) plus the entry's own keys
from configs/model/<name>.yaml, so one config line swaps architectures.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
from typing import Callable

import torch.nn as nn

from cnnlab.config.checks import keyword_problems
from cnnlab.errors import ConfigError
from cnnlab.models.inspector.tracing import builds_and_runs, first_failure, smallest_square_input

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(builder):
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = builder
        return builder
    return wrap


def model_config_problems(cfg) -> list[str]:
    """What is wrong with a model config, found from the builder's signature without building anything: the name,
    model.init, keys the builder does not take, the types its signature declares (NaN and infinity refused in the
    other keys), then the entry's own rules. The one check of the model section: the validator reports these
    before data loads, build_model refuses them."""
    _import_zoo()
    name = cfg.get("name")
    if name not in MODELS:
        return [f"model.name={name!r} is not in the zoo; choose one of {', '.join(sorted(MODELS))}"] + \
            _nonfinite_keys(cfg)
    problems = []
    init = cfg.get("init", "default") or "default"  # an optional key: most entries' files leave it out
    if init not in INITS:
        problems.append(f"model.init={init!r} is not accepted; choose one of {', '.join(INITS)}")
    accepted = set(inspect.signature(MODELS[name]).parameters) - {"in_channels", "num_classes", "input_size"}
    unknown = sorted(k for k in cfg if k not in ("name",) + GENERIC_KEYS and not str(k).startswith("_")
                     and k not in accepted)
    if unknown:
        problems.append(f"model {name!r} has no key(s) {', '.join('model.' + k for k in unknown)}; "
                        f"it accepts {', '.join(sorted(accepted)) or 'none'}")
    if problems:
        return problems + _nonfinite_keys(cfg)
    problems += keyword_problems(MODELS[name], cfg, "model")
    # An entry whose keys need more than a type check (model=torchvision's arch, model=hub's repo) says so here,
    # so that validation reports it before any data is loaded.
    check = getattr(MODELS[name], "config_problems", None)
    if check is not None and not problems:
        problems += check(cfg)
    return problems


def _nonfinite_keys(cfg) -> list[str]:
    """NaN or infinity in a model section whose keys cannot be typed (unknown name or keys)."""
    return keyword_problems(None, cfg, "model")


# False while build_model builds a model whose weights come from elsewhere (a checkpoint being restored or
# fine-tuned from, the summary's meta-device build): builders then build the architecture their pretrained
# weights imply without reading or downloading them.
_LOAD_PRETRAINED: contextvars.ContextVar[bool] = contextvars.ContextVar("cnnlab_load_pretrained", default=True)


def loads_pretrained() -> bool:
    """Whether the builder being run should load the pretrained weights its keys name (see build_model)."""
    return _LOAD_PRETRAINED.get()


def build_model(cfg, in_channels: int, num_classes: int, input_size, pretrained: bool = True,
                checked: bool = False) -> nn.Module:
    """Build the zoo entry named by cfg.name, sized for the data; unknown names and keys list what is valid.

    pretrained=False: the weights named by the entry's keys (model.weights, model.pretrained) are not loaded,
    for a model about to receive a checkpoint's weights; the architecture is the same. checked=True: `cfg` is
    the model section of a config validation passed (cnnlab.run.validate, which runs model_config_problems),
    so the check is not run again (a model=hub entry would list its repository again, model=torchvision
    resolve its weights again).
    """
    token = _LOAD_PRETRAINED.set(bool(pretrained))
    try:
        return _build_model(cfg, in_channels, num_classes, input_size, checked)
    finally:
        _LOAD_PRETRAINED.reset(token)


def _build_model(cfg, in_channels: int, num_classes: int, input_size, checked: bool) -> nn.Module:
    problems = [] if checked else model_config_problems(cfg)
    if problems:
        raise ConfigError(problems)
    if int(num_classes) < 1:
        raise ConfigError(f"data.num_classes={num_classes} must be at least 1")
    name = cfg["name"]
    builder = MODELS[name]
    kwargs = {k: v for k, v in cfg.items() if k not in ("name",) + GENERIC_KEYS and not str(k).startswith("_")}
    init = cfg.get("init", "default") or "default"

    def build(size):
        return builder(in_channels=int(in_channels), num_classes=int(num_classes), input_size=tuple(size), **kwargs)

    try:
        model = build(input_size)
    except RuntimeError as bad:  # entries that size their head with a shape pass fail while being built
        _input_size_error(name, int(in_channels), input_size, f"{str(bad).splitlines()[0]}",
                          lambda size: builds_and_runs(build, int(in_channels), size))
    # The input-size check is the inspector's shape trace of one sample (on the meta device: no compute).
    failure = first_failure(model, (int(in_channels), *input_size))
    if failure is not None:
        _input_size_error(name, int(in_channels), input_size, failure,
                          lambda size: first_failure(model, (int(in_channels), *size)) is None)
    if init != "default":
        initialize(model, init)
    return model


# Keys every entry accepts; build_model handles them instead of the builder.
GENERIC_KEYS = ("init",)
INITS = ("default", "kaiming", "xavier")


def initialize(model: nn.Module, scheme: str) -> None:
    """Re-initialise every conv and linear layer: 'kaiming' (He et al. 2015, for ReLU nets) or 'xavier'
    (Glorot & Bengio 2010, for tanh/sigmoid nets); biases start at zero. 'default' keeps each entry's own
    initialisation (PyTorch's, or the paper's where the entry implements it)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if scheme == "kaiming":
                nn.init.kaiming_normal_(module.weight, mode="fan_out" if isinstance(module, nn.Conv2d) else "fan_in",
                                        nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _input_size_error(name: str, in_channels: int, input_size, failure: str, accepts) -> None:
    """Raise a ConfigError naming the failing layer and the smallest square input `accepts` (size -> bool)."""
    side = smallest_square_input(accepts, limit=1024)
    smallest = "none up to 1024x1024" if side is None else f"{side}x{side}"
    raise ConfigError(f"model {name!r} cannot take {in_channels}x{input_size[0]}x{input_size[1]} inputs: {failure}. "
                      f"The smallest square input it accepts is {smallest}; change data.input_size or the model")


# Modules whose @register decorators fill MODELS. They import torchvision only inside the builders that
# need it, so building LeNet-5 never pays torchvision's second of import time.
ZOO_MODULES = ("lenet", "alexnet", "torchvision_zoo", "mlp", "cifar_resnet", "densenet_bc", "convnet", "torchvision_source",
               "timm_source", "hub_source")


def _import_zoo() -> None:
    for module in ZOO_MODULES:
        importlib.import_module(f"cnnlab.models.{module}")
