"""Finding a model's layers by name: what each one outputs, which ones have filters, the default choices.

One forward pass of a blank image with a hook on every module records each module's output shape in the order
the modules finish. The conv layers, the layers with a spatial output and the default Grad-CAM layer all come
from that record, so the choices hold for any zoo entry, including blocks that torch.nn has no name for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from cnnlab.errors import ConfigError

POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)


@dataclass
class LayerOutput:
    name: str
    module: nn.Module
    shape: tuple[int, ...] | None    # output shape without the batch dim; None when it is not one tensor
    produced_by_pooling: bool         # the output tensor is a pooling layer's (also when a container passes it on)
    tensor: int                       # which output tensor: modules passing on the same tensor share the number

    @property
    def title(self) -> str:
        """The name with the module's type, e.g. "features.3 (Conv2d)": a Sequential's layers are only numbers."""
        return f"{self.name} ({type(self.module).__name__})"

    @property
    def spatial(self) -> bool:
        """A (C, H, W) output with more than one position: something a heat map can be drawn from."""
        return self.shape is not None and len(self.shape) == 3 and self.shape[1] * self.shape[2] > 1


def probe_layers(model: nn.Module, in_channels: int, input_size: tuple[int, int], device) -> list[LayerOutput]:
    """Every named module with its output, in the order the forward pass finishes them (a block after its
    children)."""
    records, outputs, handles = [], [], []

    def hook_for(name):
        def hook(module, _inputs, output):
            # Keeping the tensor alive makes `is` a sound test for "the same output passed on".
            same = next((r for r, o in zip(records, outputs) if o is output), None)
            pooled = isinstance(module, POOLING) or (same is not None and same.produced_by_pooling)
            shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
            tensor = same.tensor if same is not None else len(records)
            records.append(LayerOutput(name, module, shape, pooled, tensor))
            outputs.append(output)
        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    seen, unique = set(), []
    for record in records:  # a module called twice keeps its first record
        if record.name not in seen:
            seen.add(record.name)
            unique.append(record)
    return unique


def conv_layers(probe: list[LayerOutput]) -> list[LayerOutput]:
    return [r for r in probe if isinstance(r.module, nn.Conv2d)]


def spread(items: list, k: int) -> list:
    """k items evenly spaced from the first to the last (all of them when there are no more than k)."""
    if len(items) <= k:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in picks]


def _names(records: list[LayerOutput]) -> str:
    return ", ".join(r.name for r in records)


def find_conv_layer(probe: list[LayerOutput], name: str, option: str = "--layer") -> LayerOutput:
    """The conv layer called `name`; a ConfigError listing the conv layers when there is none of that name, or
    when that layer is not a conv layer (it has no filters to draw)."""
    convs = conv_layers(probe)
    if not convs:
        raise ConfigError(f"{option}={name}: this model has no conv layers")
    record = next((r for r in probe if r.name == name), None)
    if record is None:
        raise ConfigError(f"{option}={name}: the model has no layer of that name; its conv layers are: {_names(convs)}")
    if not isinstance(record.module, nn.Conv2d):
        raise ConfigError(f"{option}={name} is a {type(record.module).__name__}, not a conv layer, so it has no "
                          f"filters to draw; the conv layers are: {_names(convs)}")
    return record


def spatial_layers(probe: list[LayerOutput]) -> list[LayerOutput]:
    """The layers worth offering for Grad-CAM: conv layers and blocks (modules with children) with a spatial
    output. Activations and norms inside a block give the same maps as the block or its conv."""
    return [r for r in probe if r.spatial and (isinstance(r.module, nn.Conv2d) or any(True for _ in r.module.children()))]


def find_spatial_layer(probe: list[LayerOutput], name: str, option: str = "--gradcam-layer") -> LayerOutput:
    """The layer called `name`, which must output feature maps (C, H, W) with more than one position."""
    choices = spatial_layers(probe)
    record = next((r for r in probe if r.name == name), None)
    if record is None:
        raise ConfigError(f"{option}={name}: the model has no layer of that name; layers with a spatial output "
                          f"are: {_names(choices)}")
    if not record.spatial:
        shape = "not a single tensor" if record.shape is None else f"of shape {record.shape}"
        raise ConfigError(f"{option}={name}: its output is {shape}, not feature maps with more than one position, "
                          f"so there is no map to draw; layers with a spatial output are: {_names(choices)}")
    return record


def default_gradcam_layer(probe: list[LayerOutput]) -> LayerOutput:
    """The last spatial output before the network pools it away (Grad-CAM's usual choice: the last conv
    block). It is named by the outermost module returning that very tensor that is not a plain Sequential:
    ResNet's last BasicBlock rather than its final ReLU or the stage around it; LeNet's last activation."""
    candidates = [r for r in probe if r.spatial and not r.produced_by_pooling]
    if not candidates:
        raise ConfigError("this model has no layer with a spatial output that Grad-CAM could use")
    last = candidates[-1]
    # Nested modules that return the same tensor (a block's last ReLU, the block, the stage around it).
    same = [r for r in probe if r.tensor == last.tensor]
    named = [r for r in same if type(r.module) is not nn.Sequential]
    return named[-1] if named else last  # modules finish after their children: the last is the outermost
