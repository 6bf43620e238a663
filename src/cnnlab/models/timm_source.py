"""model=timm: timm's models (the way image models on the Hugging Face Hub load), adapted to the data."""

from __future__ import annotations

import difflib
import importlib.util
import os
import pickle
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.hub
import torch.nn as nn

from cnnlab.errors import ConfigError
from cnnlab.models.backbones import (adapt_input, check_weights_finite, class_dependent_modules, common_problems,
                                    config_values, error_line, load_weights_file, plain_kwargs, set_head)
from cnnlab.models import loads_pretrained, register

# ---- model=timm ----------------------------------------------------------------------------------------------------
_TIMM_MISSING = "model=timm needs the timm package: pip install 'cnnlab[timm]'"


def _import_timm():
    try:
        import timm  # imported by model=timm only: ~1 s
    except ImportError:
        raise ConfigError(_TIMM_MISSING) from None
    return timm


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache, as huggingface_hub finds it (HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME), read now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def timm_cached_weights(arch: str) -> str:
    """The local file of timm's pretrained weights for `arch` (with or without a .tag): the Hugging Face cache
    (the Hub repo timm names), else torch.hub's cache (the weights' URL). Never the network."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    places = []
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        cache = hf_cache_dir()
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision or None)
            if isinstance(found, str):
                return found
        places.append(f"the Hugging Face Hub repo {repo_id} ({' or '.join(names)}) is not in the local Hugging Face "
                      f"cache {cache}: on a machine with network run `hf download {repo_id}` (or "
                      f"timm.create_model('{arch}', pretrained=True)) and copy its "
                      f"models--{repo_id.replace('/', '--')} folder into {cache} (HF_HUB_CACHE or HF_HOME moves it)")
    if cfg is not None and cfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if cached.is_file():
            return str(cached)
        places.append(f"nor is {cfg.url} at {cached} (torch.hub's cache)")
    if not places:
        raise ConfigError(f"model.pretrained=true: timm has no pretrained weights for {arch!r}; see "
                          f"timm.list_pretrained('{arch.split('.')[0]}*')")
    raise ConfigError(f"model.pretrained=true: timm's weights for {arch} are not on this machine: "
                      f"{'; '.join(places)}; or give a file with model.weights=<path>")


def _timm_problems(cfg) -> list[str]:
    if importlib.util.find_spec("timm") is None:
        return [_TIMM_MISSING]
    import timm
    from timm.models import get_pretrained_cfg

    v = config_values(cfg)
    problems = common_problems(v, "timm")
    arch = v.get("arch")
    base = str(arch).split(".")[0]
    if not isinstance(arch, str) or not timm.is_model(arch):
        names = timm.list_models()
        close = difflib.get_close_matches(base, names, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "timm.list_models() lists them"
        return problems + [f"model.arch={arch!r} is not one of timm's {len(names)} models; {hint}"]
    if v.get("pretrained") is True and v.get("weights"):
        problems.append(f"model.pretrained=true and model.weights={v['weights']} name two sources of weights; "
                        "keep one")
    if v.get("pretrained") is True:
        try:
            pcfg = get_pretrained_cfg(arch)
        except RuntimeError:
            pcfg = None
        if pcfg is None or not (pcfg.hf_hub_id or pcfg.url or pcfg.file):
            tags = timm.list_pretrained(f"{base}.*")
            problems.append(f"model.arch={arch}: timm has no pretrained weights of that name"
                            f"{'; it has ' + ', '.join(tags) if tags else ''}")
    return problems


@register("timm")
def timm_backbone(in_channels: int, num_classes: int, input_size, arch: str = "resnet18", pretrained: bool = False,
                  weights: str | None = None, adapt_stem: str | bool = "auto", kwargs: dict | None = None) -> nn.Module:
    """timm.create_model(arch, pretrained, num_classes, in_chans, **kwargs), sized for the data."""
    timm = _import_timm()
    kwargs = plain_kwargs(kwargs)

    def create(n: int, **extra) -> nn.Module:
        try:
            return timm.create_model(arch, num_classes=n, in_chans=in_channels, **kwargs, **extra)
        except TypeError as bad:
            raise ConfigError(f"model.kwargs={kwargs}: timm's {arch} does not accept them ({error_line(bad)})") from None

    def adapted(n: int) -> nn.Module:
        model = create(n)
        adapt_input(model, "stride", None, input_size, adapt_stem)
        return model

    if pretrained and loads_pretrained():
        cached = timm_cached_weights(arch)
        try:
            model = create(num_classes, pretrained=True, pretrained_cfg_overlay={"file": cached})
        except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as bad:
            raise ConfigError(f"model.pretrained=true: timm could not load {cached} into {arch}: "
                              f"{error_line(bad)}") from None
        check_weights_finite(model, f"model.pretrained=true: {cached}")
    else:
        model = create(num_classes)
    adapt_input(model, "stride", None, input_size, adapt_stem)
    heads = class_dependent_modules(adapted, num_classes)
    if weights and loads_pretrained():
        first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
        first = first[0] if isinstance(first, (list, tuple)) else first
        load_weights_file(model, weights, heads or [], first if in_channels != 3 else None)
    return set_head(model, heads)


timm_backbone.config_problems = _timm_problems
