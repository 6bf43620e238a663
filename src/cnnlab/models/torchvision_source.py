"""model=torchvision: any torchvision classification model by name, adapted to the data (models/backbones.py)."""

from __future__ import annotations

import difflib
import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.hub
import torch.nn as nn

from cnnlab.errors import ConfigError
from cnnlab.models.backbones import (TORCHVISION_STEMS, adapt_input, check_weights_finite, class_dependent_modules,
                                    common_problems, config_values, construct, error_line, fresh_head,
                                    is_weights_file, load_weights_file, out_features, plain_kwargs, replace_module,
                                    set_head)
from cnnlab.models import loads_pretrained, register
from cnnlab.models.torchvision_zoo import weights_member


# ---- model=torchvision ---------------------------------------------------------------------------------------------
def _torchvision_weights(arch: str, text: str):
    """The weights enum member that `text` (IMAGENET1K_V1, DEFAULT, ResNet18_Weights.IMAGENET1K_V1) names."""
    return weights_member(arch, text, f"model.arch={arch}", ", or give a file path")


def _implied_by_weights(family: str, member, kwargs: dict) -> dict:
    """The keyword arguments torchvision's builder sets when it loads `member`: building with them and no
    weights gives the architecture the weights were loaded into."""
    if family in ("googlenet", "inception"):
        return {"transform_input": kwargs.get("transform_input", True), "init_weights": False,
                "aux_logits": kwargs.get("aux_logits", family == "inception")}
    if family == "vision_transformer":
        return {"image_size": member.meta["min_size"][0]}
    if family == "maxvit":
        return {"input_size": member.meta["min_size"]}
    return {}


def _torchvision_problems(cfg) -> list[str]:
    import torchvision.models as tvm

    v = config_values(cfg)
    problems = common_problems(v, "torchvision")
    names = tvm.list_models(module=tvm)
    arch = v.get("arch")
    if arch not in names:
        close = difflib.get_close_matches(str(arch), names, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(names)}"
        return problems + [f"model.arch={arch!r} is not a torchvision classification model; {hint} "
                           f"(torchvision.models.list_models(module=torchvision.models) lists all {len(names)})"]
    weights = v.get("weights")
    if isinstance(weights, str) and weights and not is_weights_file(weights):
        try:
            _torchvision_weights(arch, weights)
        except ConfigError as bad:
            problems += bad.problems
    return problems


@register("torchvision")
def torchvision_backbone(in_channels: int, num_classes: int, input_size, arch: str = "mobilenet_v2",
                         weights: str | None = None, adapt_stem: str | bool = "auto",
                         kwargs: dict | None = None) -> nn.Module:
    """Any of torchvision.models.list_models(module=torchvision.models), sized for the data."""
    import torchvision.models as tvm

    kwargs = plain_kwargs(kwargs)
    builder = tvm.get_model_builder(arch)
    family = builder.__module__.rsplit(".", 1)[-1]
    rule = TORCHVISION_STEMS.get(family, "stride")
    file = weights if weights and is_weights_file(weights) else None
    member = _torchvision_weights(arch, weights) if weights and not file else None
    implied = _implied_by_weights(family, member, kwargs) if member is not None else {}

    def call(**extra):
        try:
            return builder(**{**kwargs, **extra})
        except TypeError as bad:
            raise ConfigError(f"model.kwargs={kwargs}: torchvision's {arch} does not accept them "
                              f"({error_line(bad)})") from None

    def architecture(n: int, cpu_fallback: bool = True) -> nn.Module:
        return construct(lambda: call(weights=None, num_classes=n, **implied), cpu_fallback)

    def adapted(n: int) -> nn.Module:  # on the meta device only (RegNet's head is then found by the zoo's rule)
        model = architecture(n, cpu_fallback=False)
        adapt_input(model, rule, in_channels, input_size, adapt_stem)
        return model

    if member is not None and loads_pretrained():
        try:
            model = call(weights=member)
        except (OSError, RuntimeError, pickle.UnpicklingError) as bad:  # URLError: an OSError (offline)
            cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(member.url).path)
            if cached.is_file():
                raise ConfigError(f"model.weights={weights}: the file {cached} (torch.hub's cache) does not load "
                                  f"into {arch}: {error_line(bad)}") from None
            raise ConfigError(
                f"model.weights={weights}: cannot load {member.url} ({error_line(bad)}). Without network, download "
                f"that file on another machine and put it at {cached} (torch.hub's cache; TORCH_HOME moves it), or "
                f"give a file with model.weights=<path>") from None
        cached_name = os.path.basename(urlparse(member.url).path)
        check_weights_finite(model, f"model.weights={weights} ({cached_name} in torch.hub's cache)")
        categories = len(member.meta["categories"])
        for name, module in [(n, m) for n, m in model.named_modules() if out_features(m) == categories]:
            replace_module(model, name, fresh_head(module, num_classes))
    else:
        model = architecture(num_classes)
    fresh, conv = adapt_input(model, rule, in_channels, input_size, adapt_stem)
    heads = class_dependent_modules(adapted, num_classes)
    if file and loads_pretrained():
        load_weights_file(model, file, [*(heads or []), *fresh], conv)
    return set_head(model, heads)


torchvision_backbone.config_problems = _torchvision_problems
