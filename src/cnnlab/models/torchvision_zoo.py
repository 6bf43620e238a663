"""Zoo entries built on torchvision's implementations, adapted for small images in one place.

torchvision is imported inside the builders only: a LeNet-5 run never pays its import time.
`adapt_stem` is the single place where ImageNet-shaped stems are changed for 28/32-pixel inputs and for
inputs that are not RGB; everything else is torchvision's code, so its weights enums still fit the
unadapted models.
"""

from __future__ import annotations

import os

import torch.hub
import torch.nn as nn

from cnnlab.errors import ConfigError
from cnnlab.models import loads_pretrained, register
from cnnlab.models.layers import swap_relu

# Below this input size the ImageNet stems (7x7/11x11 stride-2+ convolutions and an early max pool)
# throw away most of the image, so they are replaced by a 3x3 stride-1 convolution.
SMALL_INPUT = 64


def _is_small(input_size) -> bool:
    return min(input_size) < SMALL_INPUT


def _conv_like(old: nn.Conv2d, in_channels: int, kernel_size=None, stride=None, padding=None) -> nn.Conv2d:
    return nn.Conv2d(in_channels, old.out_channels, kernel_size=kernel_size or old.kernel_size,
                     stride=stride or old.stride, padding=old.padding if padding is None else padding,
                     bias=old.bias is not None)


def adapt_stem(model: nn.Module, family: str, in_channels: int, input_size) -> nn.Module:
    """Swap the first convolution for `in_channels`, and for small inputs replace the stem entirely."""
    small = _is_small(input_size)
    if family == "resnet":
        if small:
            model.conv1 = _conv_like(model.conv1, in_channels, kernel_size=3, stride=1, padding=1)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = _conv_like(model.conv1, in_channels)
    elif family == "densenet":
        conv0 = model.features.conv0
        if small:
            model.features.conv0 = _conv_like(conv0, in_channels, kernel_size=3, stride=1, padding=1)
            model.features.pool0 = nn.Identity()
        elif in_channels != 3:
            model.features.conv0 = _conv_like(conv0, in_channels)
    elif family == "googlenet":
        conv = model.conv1.conv
        if small:
            model.conv1.conv = _conv_like(conv, in_channels, kernel_size=3, stride=1, padding=1)
            model.maxpool1 = nn.Identity()
            model.maxpool2 = nn.Identity()
        elif in_channels != 3:
            model.conv1.conv = _conv_like(conv, in_channels)
    elif family == "inception_v3":
        if in_channels != 3:
            model.Conv2d_1a_3x3.conv = _conv_like(model.Conv2d_1a_3x3.conv, in_channels)
    elif family in ("vgg", "alexnet_torchvision"):
        first = model.features[0]
        if in_channels != 3:
            model.features[0] = _conv_like(first, in_channels)
        if family == "vgg" and small:
            # Five 2x2 pools take 32px to 1px and 28px to nothing: drop the last pool and classify from
            # globally pooled 512 features (the usual CIFAR VGG head) instead of a 7x7x512 grid.
            last_pool = max(i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d))
            model.features[last_pool] = nn.Identity()
            model.avgpool = nn.AdaptiveAvgPool2d(1)
            num_classes = model.classifier[-1].out_features
            model.classifier = nn.Sequential(
                nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(512, num_classes))
    else:
        raise ValueError(f"unknown family {family}")
    return model


def torchvision_model(fn_name: str, weights: str | None, num_classes: int, **kwargs) -> nn.Module:
    """torchvision's `fn_name`, randomly initialised or with pretrained `weights` (an enum member name such as
    IMAGENET1K_V1 or DEFAULT, optionally prefixed by its enum, e.g. ResNet18_Weights.IMAGENET1K_V1).

    Pretrained models are built with their own classes, then every classifier layer with that many outputs
    is replaced by a fresh one for `num_classes`. While build_model is told not to load pretrained weights (a
    checkpoint's are coming), the same architecture is built without them.
    """
    import torchvision.models as tvm  # ~1 s to import: only torchvision entries pay it, when built

    if not weights or not loads_pretrained():
        return getattr(tvm, fn_name)(weights=None, num_classes=num_classes, **kwargs)
    chosen = weights_member(fn_name, weights, f"model {fn_name!r}")
    try:
        model = getattr(tvm, fn_name)(weights=chosen, **kwargs)
    except (OSError, RuntimeError) as bad:  # URLError is an OSError; offline downloads end here
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(chosen.url))
        raise ConfigError(
            f"model.weights={weights}: cannot load {chosen.url} ({str(bad).splitlines()[0]}). Without network, "
            f"download that file on another machine and put it at {cached} (torch.hub's cache; TORCH_HOME moves "
            "it), or start from a cnnlab checkpoint with finetune.checkpoint=<path>") from None
    pretrained_classes = len(chosen.meta["categories"])
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear) and child.out_features == pretrained_classes:
                setattr(parent, child_name, nn.Linear(child.in_features, num_classes, bias=child.bias is not None))
    return model


def _vgg(name: str):
    def build(in_channels: int, num_classes: int, input_size, dropout: float = 0.5, weights: str | None = None,
              activation: str = "relu"):
        model = torchvision_model(name, weights, num_classes, dropout=dropout)
        return swap_relu(adapt_stem(model, "vgg", in_channels, input_size), activation)

    build.__doc__ = f"torchvision {name} (Simonyan & Zisserman 2015)."
    return build


for _name in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"):
    register(_name)(_vgg(_name))


def _resnet(name: str):
    def build(in_channels: int, num_classes: int, input_size, zero_init_residual: bool = False,
              weights: str | None = None, activation: str = "relu"):
        model = torchvision_model(name, weights, num_classes, zero_init_residual=zero_init_residual)
        return swap_relu(adapt_stem(model, "resnet", in_channels, input_size), activation)

    build.__doc__ = f"torchvision {name} (He et al. 2016), ImageNet layout; 3x3 stem for small inputs."
    return build


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    register(_name)(_resnet(_name))


def _densenet(name: str):
    def build(in_channels: int, num_classes: int, input_size, drop_rate: float = 0.0, weights: str | None = None):
        model = torchvision_model(name, weights, num_classes, drop_rate=drop_rate)
        return adapt_stem(model, "densenet", in_channels, input_size)

    build.__doc__ = f"torchvision {name} (Huang et al. 2017)."
    return build


for _name in ("densenet121", "densenet169", "densenet201"):
    register(_name)(_densenet(_name))


@register("alexnet_torchvision")
def alexnet_torchvision(in_channels: int, num_classes: int, input_size, dropout: float = 0.5,
                        weights: str | None = None, activation: str = "relu") -> nn.Module:
    """torchvision's AlexNet variant (64-192-384-256-256 filters, no LRN): the one its pretrained weights fit."""
    model = torchvision_model("alexnet", weights, num_classes, dropout=dropout)
    return swap_relu(adapt_stem(model, "alexnet_torchvision", in_channels, input_size), activation)


@register("googlenet")
def googlenet(in_channels: int, num_classes: int, input_size, aux_logits: bool = True, aux_weight: float = 0.3,
              dropout: float = 0.2, weights: str | None = None) -> nn.Module:
    """GoogLeNet / Inception v1 (Szegedy et al. 2015). The two auxiliary classifiers' losses are added to the
    main loss with weight `aux_weight` during training; at eval the model returns the main logits only."""
    model = torchvision_model("googlenet", weights, num_classes, aux_logits=aux_logits, transform_input=False,
                              dropout=dropout, **({} if weights and loads_pretrained() else {"init_weights": True}))
    model.aux_loss_weight = float(aux_weight) if aux_logits else 0.0
    return adapt_stem(model, "googlenet", in_channels, input_size)


@register("inception_v3")
def inception_v3(in_channels: int, num_classes: int, input_size, aux_logits: bool = True, aux_weight: float = 0.4,
                 dropout: float = 0.5, weights: str | None = None) -> nn.Module:
    """Inception v3 (Szegedy et al. 2016); needs inputs of at least 75x75, and 299x299 for its auxiliary head."""
    if min(input_size) < 75:
        raise ConfigError(f"model inception_v3 needs inputs of at least 75x75 (data.input_size={list(input_size)}); "
                          "resize the data (data.input_size=[299,299]) or pick a small-image model")
    if aux_logits and min(input_size) < 299:
        raise ConfigError(f"model inception_v3's auxiliary classifier needs inputs of at least 299x299 "
                          f"(data.input_size={list(input_size)}); set model.aux_logits=false for smaller inputs")
    model = torchvision_model("inception_v3", weights, num_classes, aux_logits=aux_logits, transform_input=False,
                              dropout=dropout, **({} if weights and loads_pretrained() else {"init_weights": True}))
    model.aux_loss_weight = float(aux_weight) if aux_logits else 0.0
    return adapt_stem(model, "inception_v3", in_channels, input_size)


def weights_member(arch: str, text, fits: str, alternative: str = "") -> object:
    """The member of torchvision's weights enum for `arch` that `text` names (IMAGENET1K_V1, DEFAULT, or prefixed by
    its enum: ResNet18_Weights.IMAGENET1K_V1), else a ConfigError: `text` does not fit `fits`, listing the
    members (and `alternative`, what else model.weights may be)."""
    import torchvision.models as tvm  # ~1 s to import: only torchvision-based models pay it

    enum = tvm.get_model_weights(arch)
    valid = [w.name for w in enum] + ["DEFAULT"]
    prefix, _, member = str(text).rpartition(".")
    if (prefix and prefix != enum.__name__) or member not in valid:
        raise ConfigError(f"model.weights={text!r} does not fit {fits}; its weights are "
                          f"{', '.join(f'{enum.__name__}.{v}' for v in valid)}{alternative}")
    return enum.DEFAULT if member == "DEFAULT" else enum[member]
