"""Gradient flow and activation health, measured with hooks on a copy of the model.

Per weight layer (convolution, linear), in the order the forward pass runs them: the gradient norm relative to
the weight norm (what one plain SGD step changes, per unit of learning rate), and the update/weight ratio each
optimizer step actually made (rule of thumb: about 1e-3). Per activation call: the fraction of dead ReLU units
(channels or features that are zero for every image of the batch) and of saturated sigmoid/tanh outputs (where
the derivative is almost zero). Measured at initialisation and after a few steps at the configured rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

# Outputs this close to a squashing function's limits pass back less than ~4% of the largest derivative.
SATURATION = {nn.Sigmoid: (0.01, 0.99), nn.Tanh: (-0.99, 0.99), nn.Hardtanh: (-0.99, 0.99)}
RELUS = (nn.ReLU, nn.ReLU6)


@dataclass
class LayerGrad:
    name: str
    grad_norm: float
    weight_norm: float

    @property
    def relative(self) -> float:
        return self.grad_norm / self.weight_norm if self.weight_norm > 0 else math.inf


@dataclass
class ActivationStat:
    name: str       # module name, with "#k" when one module is called k times in a forward pass
    kind: str       # relu | sigmoid | tanh
    dead: float | None = None        # ReLU: fraction of units never positive on the batch
    saturated: float | None = None   # sigmoid/tanh: fraction of outputs near the limits


@dataclass
class Snapshot:
    """One forward/backward pass: per-layer gradients and per-activation statistics."""

    loss: float
    layers: list[LayerGrad]
    activations: list[ActivationStat]


@dataclass
class GradientReport:
    init: Snapshot
    trained: Snapshot | None                 # after `steps` steps; None when a step was not finite
    update_ratios: dict[str, list[float]] = field(default_factory=dict)  # layer -> ratio per step
    steps: int = 0


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules with a trainable weight matrix or kernel (norm layers' scales are left out)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.ndim >= 2 and m.weight.requires_grad}


class _Recorder:
    """Forward hooks: the weight layers' execution order and each activation call's statistics."""

    def __init__(self, model: nn.Module):
        self.layers = weight_layers(model)
        self.order: list[str] = []
        self.stats: list[ActivationStat] = []
        self.calls: dict[str, int] = {}
        self.handles = [m.register_forward_hook(self._layer_hook(name)) for name, m in self.layers.items()]
        for name, m in model.named_modules():
            if isinstance(m, RELUS) or type(m) in SATURATION:
                self.handles.append(m.register_forward_hook(self._activation_hook(name or type(m).__name__)))

    def reset(self) -> None:
        self.order, self.stats, self.calls = [], [], {}

    def _layer_hook(self, name):
        def hook(module, inputs, output):
            if name not in self.order:
                self.order.append(name)
        return hook

    def _activation_hook(self, name):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.ndim < 2:
                return
            out = output.detach().float()
            count = self.calls[name] = self.calls.get(name, 0) + 1
            label = name if count == 1 else f"{name}#{count}"
            if isinstance(module, RELUS):
                # a unit: one channel (conv) or one feature (linear), over every image and position of the batch
                alive = (out > 0).transpose(0, 1).reshape(out.shape[1], -1).any(dim=1)
                self.stats.append(ActivationStat(label, "relu", dead=1.0 - alive.float().mean().item()))
            else:
                low, high = SATURATION[type(module)]
                saturated = ((out <= low) | (out >= high)).float().mean().item()
                self.stats.append(ActivationStat(label, type(module).__name__.lower(), saturated=saturated))
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _snapshot(model, recorder: _Recorder, loss_of, x, y) -> Snapshot:
    recorder.reset()
    model.zero_grad(set_to_none=True)
    loss = loss_of(model, x, y)
    loss.backward()
    layers = []
    for name in recorder.order:
        weight = recorder.layers[name].weight
        grad = weight.grad
        layers.append(LayerGrad(name, grad.norm().item() if grad is not None else 0.0, weight.detach().norm().item()))
    return Snapshot(loss.item(), layers, list(recorder.stats))


def measure(model: nn.Module, optimizer: torch.optim.Optimizer, loss_of, batches: list, steps: int) -> GradientReport:
    """Snapshot at init, `steps` optimizer steps over `batches` (recording update/weight ratios), snapshot again.

    loss_of(model, x, y) -> scalar loss. The model is changed: pass a copy.
    """
    model.train()
    recorder = _Recorder(model)
    try:
        x0, y0 = batches[0]
        init = _snapshot(model, recorder, loss_of, x0, y0)
        ratios: dict[str, list[float]] = {name: [] for name in recorder.order}
        for step in range(steps):
            x, y = batches[step % len(batches)]
            before = {name: recorder.layers[name].weight.detach().clone() for name in ratios}
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(model, x, y)
            if not torch.isfinite(loss):
                return GradientReport(init, None, ratios, step)
            loss.backward()
            optimizer.step()
            for name, old in before.items():
                new = recorder.layers[name].weight.detach()
                ratios[name].append(((new - old).norm() / old.norm().clamp_min(1e-12)).item())
        trained = _snapshot(model, recorder, loss_of, x0, y0)
        if not math.isfinite(trained.loss):
            trained = None
        return GradientReport(init, trained, ratios, steps)
    finally:
        recorder.close()
        model.zero_grad(set_to_none=True)
