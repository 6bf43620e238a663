"""What the backbones from outside the zoo share: any torchvision classification model (`model=torchvision`,
torchvision_source.py), timm's models (`model=timm`, timm_source.py) and torch.hub entries (`model=hub`,
hub_source.py) are adapted to the data here.

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
  `cnnlab.engine.freezing.head_names` reads (finetune.freeze=backbone, backbone_lr_scale, finetune.checkpoint). For
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

import os
import re
from typing import Callable

import torch
import torch.hub
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from cnnlab.engine.freezing import fitting_weights
from cnnlab.errors import ConfigError
from cnnlab.models.torchvision_zoo import SMALL_INPUT
from cnnlab.models.torchvision_zoo import adapt_stem as zoo_adapt_stem


# The attribute naming a model's classifier layer(s); cnnlab.engine.freezing.head_names prefers it to its own rule.
HEAD_ATTR = "head_modules"

# Small-image rule per torchvision module (the module a builder lives in): the zoo's adapt_stem for the
# families it knows, "keep" for those whose stem must stay (fixed input sizes, patch embeddings, or, as the
# zoo's alexnet_torchvision and inception_v3, none), "stride" for the rest.
TORCHVISION_STEMS = {"resnet": "resnet", "densenet": "densenet", "googlenet": "googlenet", "vgg": "vgg",
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
GITHUB_REPO = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)/([A-Za-z0-9_.-]+)(?::([A-Za-z0-9_./-]+))?$")
HEAD_PATHS = ("fc", "classifier", "head", "heads", "last_linear", "linear")


# ---- shared: config values, layers, input adaptation, heads, weight files ----------------------------------------
def config_values(cfg) -> dict:
    """The model section as plain values; a mandatory value not given (`???`) as None."""
    if isinstance(cfg, DictConfig):
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception:  # an interpolation that cannot be resolved: the schema check reports it
            cfg = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    return {k: (None if v == "???" else v) for k, v in dict(cfg).items()}


def plain_kwargs(kwargs) -> dict:
    if isinstance(kwargs, DictConfig):
        return OmegaConf.to_container(kwargs, resolve=True)
    return dict(kwargs or {})


def error_line(bad: BaseException) -> str:
    """The first line of an error loading a backbone or its weights; torch.load's refusal in cnnlab's words."""
    if "weights_only" in str(bad):  # torch.load's refusal: its advice to load with weights_only=False is never shown
        from cnnlab.engine.checkpoint import unreadable_reason

        return unreadable_reason(bad)
    lines = [line.strip() for line in str(bad).splitlines() if line.strip()]
    return lines[0] if lines else type(bad).__name__


def is_weights_file(text: str) -> bool:
    """model.weights names a file (not a torchvision weights name such as IMAGENET1K_V1)."""
    return "/" in text or os.sep in text or text.startswith(("~", ".")) or text.lower().endswith(_WEIGHT_SUFFIXES)


def common_problems(v: dict, entry: str) -> list[str]:
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


def out_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return None


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
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
    replace_module(model, name, new)
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


def construct(build: Callable[[], nn.Module], cpu_fallback: bool = True) -> nn.Module:
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
            raise ConfigError(f"model.weights={text} is not a readable safetensors file: {error_line(bad)}") from None
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


def check_weights_finite(model: nn.Module, source: str) -> None:
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
    fits, misfits = fitting_weights(state, own, tuple(fresh))
    misfits = [k for k in misfits if not k.endswith("num_batches_tracked")]
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


def set_head(model: nn.Module, names) -> nn.Module:
    if names:
        setattr(model, HEAD_ATTR, tuple(names))
    return model
