"""`convnet`: a network written layer by layer in the config, in the style of a Keras Sequential model; its
shape arithmetic, `padding: same` and the output layer's rule: docs/zoo.md, "A network described in YAML".
"""

from __future__ import annotations

import math

import torch.nn as nn

from cnnlab.errors import ConfigError
from cnnlab.models import register
from cnnlab.models import layers as blocks

# type -> (required keys, optional keys with defaults)
LAYER_KEYS = {
    "conv": ({"filters"}, {"kernel": 3, "stride": 1, "padding": "same", "activation": None, "bias": True}),
    "pool": (set(), {"kind": "max", "kernel": 2, "stride": None}),
    "batchnorm": (set(), {}),
    "lrn": (set(), {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}),
    "dropout": (set(), {"rate": 0.5}),
    "activation": ({"name"}, {}),
    "flatten": (set(), {}),
    "dense": ({"units"}, {"activation": None}),
}
POOL_KINDS = ("max", "avg", "l2")


def _pos_int(where: str, key: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key}={value!r} must be an integer >= {minimum}")
    return value


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvNet(nn.Sequential):
    """An nn.Sequential built from the layer list; `out_shapes[i]` is the output shape after layer i."""


def build_convnet(layer_specs, in_channels: int, num_classes: int, input_size) -> ConvNet:
    if layer_specs is None or isinstance(layer_specs, (str, bytes)) or not hasattr(layer_specs, "__iter__"):
        raise ConfigError(f"model.layers={layer_specs!r} must be a list of layer dicts, e.g. "
                          "[{type: conv, filters: 8, kernel: 3}, {type: flatten}, {type: dense, units: 10}]")
    specs = list(layer_specs)
    modules: list[nn.Module] = []
    shape: tuple[int, ...] = (int(in_channels), *map(int, input_size))  # (C, H, W) or (F,)
    out_shapes: list[tuple[int, ...]] = []
    accepted = ", ".join(LAYER_KEYS)

    def flatten():
        nonlocal shape
        if len(shape) == 3:
            modules.append(nn.Flatten())
            shape = (math.prod(shape),)

    last_dense = None
    for i, spec in enumerate(specs):
        where = f"model.layers[{i}]"
        if not hasattr(spec, "keys"):
            raise ConfigError(f"{where}={spec!r} must be a dict with a 'type' key; types: {accepted}")
        spec = {str(k): v for k, v in spec.items()}
        kind = spec.pop("type", None)
        if kind not in LAYER_KEYS:
            raise ConfigError(f"{where}: type={kind!r} is not a layer type; choose one of {accepted}")
        where = f"model.layers[{i}] ({kind})"
        required, optional = LAYER_KEYS[kind]
        unknown = sorted(set(spec) - required - set(optional))
        if unknown:
            keys = ", ".join(sorted(required | set(optional))) or "none"
            raise ConfigError(f"{where} has no key(s) {', '.join(unknown)}; it accepts {keys}")
        missing = sorted(required - set(spec))
        if missing:
            raise ConfigError(f"{where} needs key(s) {', '.join(missing)}")
        opts = {**optional, **spec}
        last_dense = None

        if kind in ("conv", "pool", "lrn") and len(shape) != 3:
            raise ConfigError(f"{where} needs an image-shaped input, but an earlier flatten/dense layer made it "
                              f"a vector of {shape[0]}")
        if kind == "conv":
            c, h, w = shape
            filters = _pos_int(where, "filters", opts["filters"])
            k = _pos_int(where, "kernel", opts["kernel"])
            s = _pos_int(where, "stride", opts["stride"])
            padding = opts["padding"]
            if padding == "same":
                (top, bottom), (left, right) = _same_pad(h, k, s), _same_pad(w, k, s)
                if top == bottom and left == right:
                    conv_pad = (top, left)
                else:
                    modules.append(nn.ZeroPad2d((left, right, top, bottom)))
                    conv_pad = 0
                oh, ow = math.ceil(h / s), math.ceil(w / s)
            elif padding == "valid" or (isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0):
                conv_pad = 0 if padding == "valid" else padding
                oh, ow = (h + 2 * conv_pad - k) // s + 1, (w + 2 * conv_pad - k) // s + 1
            else:
                raise ConfigError(f"{where}: padding={padding!r} is not accepted; choose same, valid or an "
                                  "integer >= 0")
            if oh < 1 or ow < 1:
                raise ConfigError(f"{where}: a {k}x{k} conv with stride {s} and padding {padding!r} on a {h}x{w} map "
                                  "leaves nothing")
            modules.append(nn.Conv2d(c, filters, k, stride=s, padding=conv_pad, bias=bool(opts["bias"])))
            shape = (filters, oh, ow)
            if opts["activation"] is not None:
                modules.append(blocks.activation(opts["activation"], key=f"{where} activation"))
        elif kind == "pool":
            c, h, w = shape
            k = _pos_int(where, "kernel", opts["kernel"])
            s = k if opts["stride"] is None else _pos_int(where, "stride", opts["stride"])
            pk = opts["kind"]
            if pk not in POOL_KINDS:
                raise ConfigError(f"{where}: kind={pk!r} is not accepted; choose one of {', '.join(POOL_KINDS)}")
            oh, ow = (h - k) // s + 1, (w - k) // s + 1
            if oh < 1 or ow < 1:
                raise ConfigError(f"{where}: a {k}x{k} pool on a {h}x{w} map leaves nothing")
            modules.append({"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[pk](k, s) if pk != "l2"
                           else nn.LPPool2d(2, k, s))
            shape = (c, oh, ow)
        elif kind == "batchnorm":
            modules.append(nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0]))
        elif kind == "lrn":
            size = _pos_int(where, "size", opts["size"])
            modules.append(blocks.LocalResponseNorm(size, alpha=float(opts["alpha"]), beta=float(opts["beta"]),
                                                k=float(opts["k"])))
        elif kind == "dropout":
            rate = opts["rate"]
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
                raise ConfigError(f"{where}: rate={rate!r} must be a number in [0, 1)")
            modules.append(nn.Dropout(float(rate)))
        elif kind == "activation":
            modules.append(blocks.activation(opts["name"], key=f"{where} name"))
        elif kind == "flatten":
            flatten()
        elif kind == "dense":
            units = _pos_int(where, "units", opts["units"])
            flatten()
            modules.append(nn.Linear(shape[0], units))
            shape = (units,)
            last_dense = (i, units, opts["activation"])
            if opts["activation"] is not None:
                modules.append(blocks.activation(opts["activation"], key=f"{where} activation"))
        out_shapes.append(shape)

    if last_dense is not None:
        i, units, act = last_dense
        if units != num_classes:
            raise ConfigError(f"model.layers[{i}] (dense) is the output layer, so units={units} must equal "
                              f"data.num_classes={num_classes} (or end the list with another layer and a "
                              f"{num_classes}-unit output is appended)")
        if act is not None:
            raise ConfigError(f"model.layers[{i}] (dense) is the output layer and must give logits; remove its "
                              f"activation={act!r}")
    else:
        flatten()
        modules.append(nn.Linear(shape[0], num_classes))
        out_shapes.append((num_classes,))
    net = ConvNet(*modules)
    net.out_shapes = out_shapes
    return net


@register("convnet")
def convnet(in_channels: int, num_classes: int, input_size, layers=None) -> nn.Module:
    return build_convnet(layers, in_channels, num_classes, input_size)


@register("convnet_blocks")
def convnet_blocks(in_channels: int, num_classes: int, input_size, blocks: int = 2, width: int = 32,
                   dense: int = 128, kernel: int = 3, pool: str = "max", batchnorm: bool = False,
                   dropout: float = 0.5) -> nn.Module:
    """The layer-list ConvNet described by its depth and width, for searches over both: `blocks` times
    [conv `width`*2^i kernel x kernel (same) -> batch norm (optional) -> ReLU -> pool 2], then a dense layer of
    `dense` units (0: none) with dropout, then the output layer."""
    layers = []
    for i in range(blocks):
        conv = {"type": "conv", "filters": width * 2**i, "kernel": kernel, "padding": "same"}
        layers.append(conv if batchnorm else {**conv, "activation": "relu"})
        if batchnorm:
            layers += [{"type": "batchnorm"}, {"type": "activation", "name": "relu"}]
        layers.append({"type": "pool", "kind": pool, "kernel": 2})
    layers.append({"type": "flatten"})
    if dense:
        layers += [{"type": "dense", "units": dense, "activation": "relu"}, {"type": "dropout", "rate": dropout}]
    return build_convnet(layers, in_channels, num_classes, input_size)
