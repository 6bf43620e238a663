"""Backbones from outside the zoo: any torchvision classification model (`model=torchvision`), timm's models
(`model=timm`, the way image models on the Hugging Face Hub load) and torch.hub entries (`model=hub`).

The three end the same way, so that what the zoo does works on them:
- the data's channels: the first convolution taking 3 channels is adapted and keeps its weights (summed over
  the colour channels for 1-channel data, repeated and scaled by 3/C for C channels); timm does the same
  itself (`in_chans`);
- small images (`adapt_stem: auto`, inputs under 64 pixels): torchvision's ResNet/ResNeXt/Wide ResNet,
  DenseNet, GoogLeNet and VGG get the zoo's `adapt_stem` (a fresh 3x3 stride-1 stem); AlexNet, Inception v3,
  ViT, Swin, MaxViT and ConvNeXt are left as they are; every other model (MobileNet, EfficientNet, RegNet,
  MnasNet, ShuffleNet, SqueezeNet, all of timm's and torch.hub's) gets the stride of its first convolution set
  to 1 when that convolution is strided and overlapping (kernel larger than stride), weights kept. A patch
  embedding (kernel = stride) is never changed;
- a head for the data's classes; the model carries its module names as `head_modules`, which
  `cnnlab.run.finetune.head_names` reads (finetune.freeze=backbone, backbone_lr_scale, finetune.checkpoint). For
  torchvision and timm the head is every layer whose shape depends on the number of classes (auxiliary heads
  included), found by building the architecture twice on the meta device; torch.hub's is the layer
  `model.head` names (auto: `fc`, `classifier`, `head`, `heads`, ... else the last nn.Linear);
- pretrained weights from local files only: torch.hub's cache ($TORCH_HOME/hub/checkpoints; torchvision may
  download into it), the Hugging Face cache (timm, read as with HF_HUB_OFFLINE=1), or model.weights=<file>.
  A missing file is a ConfigError naming where to put it. When build_model is told not to load pretrained
  weights (a checkpoint's are coming), the same architecture is built without them.

timm and torchvision are imported inside the builders: a LeNet-5 run never pays for them.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
import torch.hub
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigError
from cnnlab.models import loads_pretrained, register
from cnnlab.models.torchvision_zoo import SMALL_INPUT
from cnnlab.models.torchvision_zoo import adapt_stem as zoo_adapt_stem

# The attribute naming a model's classifier layer(s); cnnlab.run.finetune.head_names prefers it to its own rule.
HEAD_ATTR = "head_modules"

# Small-image rule per torchvision module (the module a builder lives in): the zoo's adapt_stem for the
# families it knows, "keep" for those whose stem must stay (fixed input sizes, patch embeddings, or, as the
# zoo's alexnet_torchvision and inception_v3, none), "stride" for the rest.
_TORCHVISION_STEMS = {"resnet": "resnet", "densenet": "densenet", "googlenet": "googlenet", "vgg": "vgg",
                      "alexnet": "keep", "inception": "keep", "vision_transformer": "keep",
                      "swin_transformer": "keep", "maxvit": "keep", "convnext": "keep"}
# What the zoo's adapt_stem replaces by fresh layers for small inputs (pretrained weights for them are skipped).
_STEM_REPLACES = {"resnet": ("conv1",), "densenet": ("features.conv0",), "googlenet": ("conv1.conv",),
                  "vgg": ("classifier",)}
# Keyword arguments cnnlab sets itself.
_RESERVED = {
    "torchvision": {"num_classes": "set from the data (data.num_classes)", "weights": "use model.weights"},
    "timm": {"num_classes": "set from the data (data.num_classes)", "in_chans": "set from data.in_channels",
             "pretrained": "use model.pretrained", "pretrained_cfg_overlay": "use model.weights",
             # file paths timm would open itself, also when a checkpoint's weights replace them; model.weights is
             # read by cnnlab (weights_only, finite values) and only when the model is built to start training
             "checkpoint_path": "use model.weights", "pretrained_cfg": "use model.weights or model.pretrained",
             "cache_dir": "timm's weights are read from the Hugging Face cache (HF_HUB_CACHE moves it)"},
    "hub": {},
}
_WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".tar")
_GITHUB_REPO = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)/([A-Za-z0-9_.-]+)(?::([A-Za-z0-9_./-]+))?$")
_HEAD_PATHS = ("fc", "classifier", "head", "heads", "last_linear", "linear")


# ---- shared: config values, layers, input adaptation, heads, weight files ----------------------------------------
def _values(cfg) -> dict:
    """The model section as plain values; a mandatory value not given (`???`) as None."""
    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception:  # an interpolation that cannot be resolved: the schema check reports it
            cfg = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    return {k: (None if v == "???" else v) for k, v in dict(cfg).items()}


def _plain(kwargs) -> dict:
    if isinstance(kwargs, DictConfig):
        return OmegaConf.to_container(kwargs, resolve=True)
    return dict(kwargs or {})


def _first_line(bad: BaseException) -> str:
    if "weights_only" in str(bad):  # torch.load's refusal: its advice to load with weights_only=False is never shown
        from cnnlab.engine.checkpoint import unreadable_reason

        return unreadable_reason(bad)
    lines = [line.strip() for line in str(bad).splitlines() if line.strip()]
    return lines[0] if lines else type(bad).__name__


def is_weights_file(text: str) -> bool:
    """model.weights names a file (not a torchvision weights name such as IMAGENET1K_V1)."""
    return "/" in text or os.sep in text or text.startswith(("~", ".")) or text.lower().endswith(_WEIGHT_SUFFIXES)


def _common_problems(v: dict, entry: str) -> list[str]:
    problems = []
    adapt = v.get("adapt_stem", "auto")
    if not (adapt == "auto" or isinstance(adapt, bool)):
        problems.append(f"model.adapt_stem={adapt!r} is not accepted; choose one of auto, true, false")
    kwargs = v.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        problems.append(f"model.kwargs={kwargs!r} must be a mapping of keyword arguments, e.g. {{width_mult: 0.5}}")
    else:
        problems += [f"model.kwargs.{key} cannot be given: {why}" for key, why in _RESERVED[entry].items()
                     if key in (kwargs or {})]
    weights = v.get("weights")
    if weights is not None and not isinstance(weights, str):
        problems.append(f"model.weights={weights!r} must be a file path"
                        f"{', a torchvision weights name (DEFAULT, IMAGENET1K_V1)' if entry == 'torchvision' else ''}"
                        f" or null")
    # (a weights file is looked for when the model is built: a run's saved config is valid without it, since the
    # model is then rebuilt for the checkpoint's weights)
    init = v.get("init") or "default"
    if init != "default" and (weights or v.get("pretrained") is True):
        problems.append(f"model.init={init} would overwrite the pretrained weights; use model.init=default with "
                        f"{'model.pretrained=true' if v.get('pretrained') is True else f'model.weights={weights}'}")
    return problems


def _outputs(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def fresh_head(old: nn.Module, num_classes: int) -> nn.Module:
    """A new, randomly initialised layer like `old` (nn.Linear or a 1x1-style nn.Conv2d) with num_classes outputs."""
    where = {"device": old.weight.device, "dtype": old.weight.dtype}
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **where)
    return nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding, old.dilation,
                     bias=old.bias is not None, **where)


def conv_weight_for_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first convolution's weight (out, 3, k, k) for `channels` input channels: summed for 1 (a grey image
    seen as R=G=B gives the same response), else repeated and scaled by 3/channels (timm's rule)."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-channels // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (weight.shape[1] / channels)


def _first_conv(model: nn.Module):
    return next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))


def adapt_channels(model: nn.Module, in_channels: int) -> str | None:
    """Swap the first convolution for one taking `in_channels`, its weights adapted; its name (None when it
    already takes them)."""
    name, old = _first_conv(model)
    if old is None or old.groups != 1:
        raise ConfigError(f"data.in_channels={in_channels}: this model does not start with a convolution whose "
                          f"input channels could be adapted; use data with the channels it takes")
    if old.in_channels == in_channels:
        return None
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    bias=old.bias is not None, padding_mode=old.padding_mode, device=old.weight.device,
                    dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv_weight_for_channels(old.weight, in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    _replace(model, name, new)
    return name


def first_conv_stride_one(model: nn.Module) -> str | None:
    """Stride 1 for the first convolution if it is strided and overlapping (not a patch embedding); its name."""
    name, conv = _first_conv(model)
    if conv is None:
        return None
    if any(s > 1 for s in conv.stride) and all(k > s for k, s in zip(conv.kernel_size, conv.stride)):
        conv.stride = (1,) * len(conv.stride)
        return name
    return None


def adapt_input(model: nn.Module, rule: str, in_channels: int | None, input_size, adapt) -> tuple[list[str], str | None]:
    """Fit the model's input end to the data. rule: a family of the zoo's adapt_stem, "stride" or "keep";
    in_channels None: the channels are already right. Returns (modules replaced by fresh layers, the name of
    the first convolution whose weights were adapted to the data's channels, or None)."""
    small = min(input_size) < SMALL_INPUT if adapt == "auto" else bool(adapt)
    if small and rule in _STEM_REPLACES:
        size = tuple(input_size) if min(input_size) < SMALL_INPUT else (SMALL_INPUT - 1,) * 2  # adapt_stem=true
        if rule == "vgg":  # the zoo's VGG rule changes only pools and head: the first conv keeps its weights
            conv = adapt_channels(model, in_channels) if in_channels else None
            zoo_adapt_stem(model, "vgg", 3, size)
            return list(_STEM_REPLACES[rule]), conv
        zoo_adapt_stem(model, rule, in_channels or 3, size)  # a fresh stem with the data's channels
        return list(_STEM_REPLACES[rule]), None
    conv = adapt_channels(model, in_channels) if in_channels else None
    if small and rule == "stride":
        first_conv_stride_one(model)
    return [], conv


def class_dependent_modules(build: Callable[[int], nn.Module], num_classes: int) -> list[str] | None:
    """The modules whose parameters change shape with the number of classes (the head, auxiliary heads too):
    the architecture built for num_classes and num_classes + 1 on the meta device, compared. None if it cannot
    be built there."""
    try:
        with torch.device("meta"):
            one, other = build(num_classes), build(num_classes + 1)
    except (RuntimeError, ConfigError):
        return None
    shapes = {k: v.shape for k, v in other.named_parameters()}
    return sorted({k.rsplit(".", 1)[0] for k, v in one.named_parameters() if shapes.get(k) != v.shape})


def _construct(build: Callable[[], nn.Module], cpu_fallback: bool = True) -> nn.Module:
    """build(); under the meta device, a builder that reads tensor values back (RegNet computes its widths
    with tensors) is built on the CPU and moved there (unless cpu_fallback is false)."""
    try:
        return build()
    except RuntimeError as bad:
        if not cpu_fallback or "meta" not in str(bad) or torch.empty(0).device.type != "meta":
            raise
    with torch.device("cpu"):
        model = build()
    return model.to("meta")


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def read_weights_file(text: str) -> dict[str, torch.Tensor]:
    """A state dict from model.weights: a .safetensors file, a torch file holding a state dict (also under
    'state_dict' or 'model'), or a cnnlab checkpoint. Read with weights_only=True: tensors and containers only."""
    from cnnlab.engine.checkpoint import check_finite, unreadable_reason  # not needed to build models otherwise

    from cnnlab.util.outpaths import input_file

    path = input_file(text, f"model.weights={text}")  # a FIFO, device or directory is named, never opened
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"model.weights={text}: reading .safetensors files needs the safetensors package "
                              "(pip install safetensors, or pip install 'cnnlab[timm]')") from None
        try:
            state = load_file(str(path), device="cpu")
        except Exception as bad:  # safetensors raises its own error types
            raise ConfigError(f"model.weights={text} is not a readable safetensors file: {_first_line(bad)}") from None
        check_finite(state, f"model.weights={text}")
        return state
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as bad:
        raise ConfigError(f"model.weights={text} is not a readable weights file: {unreadable_reason(bad)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # a cnnlab checkpoint, among others
        obj = obj["model"]
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise ConfigError(f"model.weights={text} holds no state dict (parameter names -> tensors)")
    for prefix in ("module.", "_orig_mod."):  # saved from DistributedDataParallel / torch.compile wrappers
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    check_finite(obj, f"model.weights={text}")
    return obj


def _check_finite(model: nn.Module, source: str) -> None:
    """Pretrained weights a library loaded from its cache hold finite values (checkpoint.check_finite)."""
    from cnnlab.engine.checkpoint import check_finite

    check_finite(model.state_dict(), source)


def load_weights_file(model: nn.Module, text: str, fresh, input_conv: str | None) -> None:
    """Load model.weights into `model`: everything but the modules in `fresh` (the head, replaced stems), the
    first convolution adapted to the data's channels. Any other mismatch says the file is of another model."""
    state = read_weights_file(text)
    own = model.state_dict()
    conv_key = f"{input_conv}.weight" if input_conv else None
    if conv_key in state and conv_key in own and state[conv_key].ndim == 4 \
            and state[conv_key].shape[1] != own[conv_key].shape[1]:
        state[conv_key] = conv_weight_for_channels(state[conv_key], own[conv_key].shape[1])
    fresh = tuple(fresh)
    outside = [k for k in sorted(set(state) | set(own)) if not _under(k.rsplit(".", 1)[0], fresh)]
    fits = {k: state[k] for k in outside if k in state and k in own and state[k].shape == own[k].shape}
    misfits = [k for k in outside if k not in fits and not k.endswith("num_batches_tracked")]
    if misfits:
        def describe(k):
            if k not in own:
                return f"{k} (only in the file)"
            if k not in state:
                return f"{k} (missing from the file)"
            return f"{k} (file {list(state[k].shape)}, model {list(own[k].shape)})"
        raise ConfigError(f"model.weights={text} does not fit this model outside its head ({len(misfits)} tensors, "
                          f"e.g. {', '.join(describe(k) for k in misfits[:3])}); was it saved from another "
                          f"architecture or with other model keys?")
    model.load_state_dict(fits, strict=False)


def _set_head(model: nn.Module, names) -> nn.Module:
    if names:
        setattr(model, HEAD_ATTR, tuple(names))
    return model


# ---- model=torchvision ---------------------------------------------------------------------------------------------
def _torchvision_weights(arch: str, text: str):
    """The weights enum member that `text` (IMAGENET1K_V1, DEFAULT, ResNet18_Weights.IMAGENET1K_V1) names."""
    import torchvision.models as tvm  # ~1 s to import: only torchvision-based models pay it

    enum = tvm.get_model_weights(arch)
    valid = [w.name for w in enum] + ["DEFAULT"]
    prefix, _, member = str(text).rpartition(".")
    if (prefix and prefix != enum.__name__) or member not in valid:
        raise ConfigError(f"model.weights={text!r} does not fit model.arch={arch}; its weights are "
                          f"{', '.join(f'{enum.__name__}.{v}' for v in valid)}, or give a file path")
    return enum.DEFAULT if member == "DEFAULT" else enum[member]


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

    v = _values(cfg)
    problems = _common_problems(v, "torchvision")
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

    kwargs = _plain(kwargs)
    builder = tvm.get_model_builder(arch)
    family = builder.__module__.rsplit(".", 1)[-1]
    rule = _TORCHVISION_STEMS.get(family, "stride")
    file = weights if weights and is_weights_file(weights) else None
    member = _torchvision_weights(arch, weights) if weights and not file else None
    implied = _implied_by_weights(family, member, kwargs) if member is not None else {}

    def call(**extra):
        try:
            return builder(**{**kwargs, **extra})
        except TypeError as bad:
            raise ConfigError(f"model.kwargs={kwargs}: torchvision's {arch} does not accept them "
                              f"({_first_line(bad)})") from None

    def architecture(n: int, cpu_fallback: bool = True) -> nn.Module:
        return _construct(lambda: call(weights=None, num_classes=n, **implied), cpu_fallback)

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
                                  f"into {arch}: {_first_line(bad)}") from None
            raise ConfigError(
                f"model.weights={weights}: cannot load {member.url} ({_first_line(bad)}). Without network, download "
                f"that file on another machine and put it at {cached} (torch.hub's cache; TORCH_HOME moves it), or "
                f"give a file with model.weights=<path>") from None
        cached_name = os.path.basename(urlparse(member.url).path)
        _check_finite(model, f"model.weights={weights} ({cached_name} in torch.hub's cache)")
        categories = len(member.meta["categories"])
        for name, module in [(n, m) for n, m in model.named_modules() if _outputs(m) == categories]:
            _replace(model, name, fresh_head(module, num_classes))
    else:
        model = architecture(num_classes)
    fresh, conv = adapt_input(model, rule, in_channels, input_size, adapt_stem)
    heads = class_dependent_modules(adapted, num_classes)
    if file and loads_pretrained():
        load_weights_file(model, file, [*(heads or []), *fresh], conv)
    return _set_head(model, heads)


torchvision_backbone.config_problems = _torchvision_problems


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

    v = _values(cfg)
    problems = _common_problems(v, "timm")
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
    kwargs = _plain(kwargs)

    def create(n: int, **extra) -> nn.Module:
        try:
            return timm.create_model(arch, num_classes=n, in_chans=in_channels, **kwargs, **extra)
        except TypeError as bad:
            raise ConfigError(f"model.kwargs={kwargs}: timm's {arch} does not accept them ({_first_line(bad)})") from None

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
                              f"{_first_line(bad)}") from None
        _check_finite(model, f"model.pretrained=true: {cached}")
    else:
        model = create(num_classes)
    adapt_input(model, "stride", None, input_size, adapt_stem)
    heads = class_dependent_modules(adapted, num_classes)
    if weights and loads_pretrained():
        first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
        first = first[0] if isinstance(first, (list, tuple)) else first
        load_weights_file(model, weights, heads or [], first if in_channels != 3 else None)
    return _set_head(model, heads)


timm_backbone.config_problems = _timm_problems


# ---- model=hub -----------------------------------------------------------------------------------------------------
def is_local_repo(repo: str) -> bool:
    """A directory, not owner/repo[:ref]. A string of that form always means torch.hub's cache, even where a
    directory of that name exists in the current one (write ./owner/repo for it): otherwise a folder planted
    where a command runs would stand in for a repository the user trusts by name."""
    if repo.startswith(("/", ".", "~")) or repo.count("/") > 1:
        return True
    return not _GITHUB_REPO.match(repo) and Path(repo).is_dir()


def hub_repo_dir(repo: str) -> Path:
    """The directory torch.hub loads `repo` from: a local directory, or owner/repo[:ref] in torch.hub's cache
    ($TORCH_HOME/hub/<owner>_<repo>_<ref>; without a ref, main or master, as torch.hub guesses offline)."""
    if is_local_repo(repo):
        local = Path(repo).expanduser()
        if not local.is_dir():
            raise ConfigError(f"model.repo={repo}: no such directory")
        if not (local / "hubconf.py").is_file():
            raise ConfigError(f"model.repo={repo}: {local} has no hubconf.py (the file torch.hub reads entry points from)")
        return local
    owner, name, ref = _GITHUB_REPO.match(repo).groups()
    hub = Path(torch.hub.get_dir())
    dirs = [hub / f"{owner}_{name}_{r.replace('/', '_')}" for r in ([ref] if ref else ["main", "master"])]
    for candidate in dirs:
        if candidate.is_dir():
            return candidate
    where = " or ".join(str(d) for d in dirs)
    archive = f"https://github.com/{owner}/{name}/archive/{'refs/heads/main' if not ref else ref}.zip"
    raise ConfigError(f"model.repo={repo}: not in torch.hub's cache: expected {where}. cnnlab loads hub repositories "
                      f"from the cache only: on a machine with network, torch.hub.load('{repo}', <entry>, "
                      f"trust_repo=True) fills its $TORCH_HOME/hub/{dirs[0].name}, copy that directory to {dirs[0]}; "
                      f"or unpack {archive} there; TORCH_HOME moves the cache")


def _hub_problems(cfg) -> list[str]:
    v = _values(cfg)
    problems = _common_problems(v, "hub")
    repo, entry = v.get("repo"), v.get("entry")
    if not isinstance(repo, str) or not repo:
        problems.append(f"model.repo={repo}: set model.repo to owner/repo[:ref] (a repository in torch.hub's cache) "
                        "or to a directory with a hubconf.py")
    elif not is_local_repo(repo) and not _GITHUB_REPO.match(repo):
        problems.append(f"model.repo={repo!r} is neither an existing directory nor owner/repo[:ref]")
    if not isinstance(entry, str) or not entry:
        problems.append(f"model.entry={entry}: set the hubconf.py entry point to call, e.g. model.entry=mobilenet_v2")
    head = v.get("head", "auto")
    if not isinstance(head, str) or not head:
        problems.append(f"model.head={head!r} must be auto or the name of the model's classifier layer, e.g. fc")
    trust = v.get("trust_repo", False)
    if trust is not True:
        problems.append(f"model.trust_repo={str(trust).lower() if isinstance(trust, bool) else trust}: model=hub runs the repository's hubconf.py (Python "
                        f"code from {repo or 'model.repo'}) in this process; set model.trust_repo=true if you trust "
                        "that code")
    return problems


def _hub_entries(repo_dir: Path) -> list[str]:
    """The functions a hubconf.py offers (torch.hub.list reads GitHub repositories only)."""
    spec = importlib.util.spec_from_file_location("hubconf", repo_dir / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(repo_dir))  # as torch.hub does, for the repository's own imports
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(repo_dir))
    return sorted(name for name, f in vars(module).items() if inspect.isfunction(f) and not name.startswith("_"))


def find_head(model: nn.Module, spec: str = "auto") -> str:
    """The classifier layer to replace: `spec` if it names one, else (auto) the last nn.Linear (or, failing that,
    nn.Conv2d) under the first of fc, classifier, head, heads, last_linear, linear, else the model's last nn.Linear."""
    modules = dict(model.named_modules())
    if spec != "auto":
        if _outputs(modules.get(spec, nn.Identity())) is None:
            top = ", ".join(name for name, _ in model.named_children())
            raise ConfigError(f"model.head={spec!r} is not an nn.Linear or nn.Conv2d of this model; its top-level "
                              f"modules are: {top}")
        return spec
    for path in _HEAD_PATHS:
        module = modules.get(path)
        if module is None:
            continue
        if isinstance(module, nn.Linear):
            return path
        for kind in (nn.Linear, nn.Conv2d):
            inner = [name for name, m in module.named_modules() if isinstance(m, kind)]
            if inner:
                return f"{path}.{inner[-1]}"
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    top = ", ".join(name for name, _ in model.named_children())
    raise ConfigError(f"model.head=auto found no classifier layer (no nn.Linear); name it with model.head=<module>; "
                      f"the model's top-level modules are: {top}")


@register("hub")
def hub_backbone(in_channels: int, num_classes: int, input_size, repo: str | None = None, entry: str | None = None,
                 trust_repo: bool = False, kwargs: dict | None = None, head: str = "auto", weights: str | None = None,
                 adapt_stem: str | bool = "auto") -> nn.Module:
    """torch.hub.load(<repo from the local cache or a directory>, entry, **kwargs), sized for the data."""
    if not trust_repo:  # validation refuses this first; a direct call must not run the code either
        raise ConfigError(_hub_problems({"repo": repo, "entry": entry, "trust_repo": trust_repo})[-1])
    repo_dir = hub_repo_dir(str(repo))
    kwargs = _plain(kwargs)
    try:
        model = torch.hub.load(str(repo_dir), entry, source="local", **kwargs)
    except TypeError as bad:
        raise ConfigError(f"model.kwargs={kwargs}: {entry} of {repo} does not accept them ({_first_line(bad)})") from None
    except ImportError as bad:
        raise ConfigError(f"model.repo={repo}: its hubconf.py needs a module that is not installed "
                          f"({_first_line(bad)})") from None
    except OSError as bad:  # an entry that downloads its weights, offline
        raise ConfigError(f"model.entry={entry} of {repo} could not read a file it needs ({_first_line(bad)}); files "
                          f"it downloads go to {Path(torch.hub.get_dir()) / 'checkpoints'}: put them there to load "
                          f"offline") from None
    except RuntimeError as bad:
        if "Cannot find callable" in str(bad):
            entries = _hub_entries(repo_dir)
            raise ConfigError(f"model.entry={entry!r} is not an entry point of {repo_dir / 'hubconf.py'}; it has: "
                              f"{', '.join(entries) or 'none'}") from None
        raise ConfigError(f"model=hub: {entry} of {repo} failed: {_first_line(bad)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.entry={entry} of {repo} returned a {type(model).__name__}, not a torch.nn.Module")
    head_name = find_head(model, head)
    _replace(model, head_name, fresh_head(model.get_submodule(head_name), num_classes))
    fresh, conv = adapt_input(model, "stride", in_channels, input_size, adapt_stem)
    if weights and loads_pretrained():
        load_weights_file(model, weights, [head_name, *fresh], conv)
    return _set_head(model, [head_name])


hub_backbone.config_problems = _hub_problems
