"""summarize(model, input_shape): the inspector's Summary of a model, from one traced sample."""

from __future__ import annotations

import torch.nn as nn

from cnnlab.models.inspector.layer_report import Layer, Summary
from cnnlab.models.inspector.tracing import _tensors, trace

# ---- the summary ------------------------------------------------------------------------------------------
def summarize(model: nn.Module, input_shape, name: str = "") -> Summary:
    """Shapes, parameters (trainable/frozen by requires_grad), MACs, activation memory and receptive fields
    of `model` for one sample of input_shape (C, H, W). The model itself is not run and not changed."""
    input_shape = tuple(int(v) for v in input_shape)
    traced, output = trace(model, input_shape)
    modules = dict(model.named_modules())
    counted: set[int] = set()

    def own_params(module: nn.Module) -> tuple[int, int]:
        trainable = frozen = 0
        for p in module.parameters(recurse=False):
            if id(p) in counted:  # a parameter shared by several layers counts once, at its first use
                continue
            counted.add(id(p))
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
        return trainable, frozen

    layers = []
    for row in traced.rows:
        module = modules.get(row["name"]) if not row["type"].startswith("F.") else None
        trainable, frozen = own_params(module) if module is not None else (0, 0)
        kind = row["type"] + (f" ({row['type_suffix']})" if row.get("type_suffix") else "")
        layers.append(Layer(name=row["name"], type=kind, kernel=row.get("kernel"), stride=row.get("stride"),
                            padding=row.get("padding"), output_shape=row["output_shape"],
                            trainable_params=trainable, frozen_params=frozen, macs=row["macs"],
                            receptive_field=row["receptive_field"], jump=row["jump"]))
    # Parameters of layers the inference pass does not run (auxiliary classifiers), and parameters that
    # containers hold themselves: listed too, so that the rows add up to the model's parameters.
    for module_name, module in model.named_modules():
        trainable, frozen = own_params(module)
        if trainable or frozen:
            leaf = next(module.children(), None) is None
            layers.append(Layer(name=module_name or "(model)", type=type(module).__name__ if leaf else
                                f"{type(module).__name__} (own parameters)", trainable_params=trainable,
                                frozen_params=frozen, executed=False))
    params = list(model.parameters())
    out = next(_tensors(output), None)
    out_rf = traced.rf.get(id(out)) if out is not None else None
    return Summary(
        model=name or type(model).__name__,
        input_shape=input_shape,
        layers=layers,
        output_shape=tuple(out.shape[1:]) if out is not None else None,
        params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        frozen_params=sum(p.numel() for p in params if not p.requires_grad),
        macs=sum(layer.macs for layer in layers),
        activation_bytes=traced.activation_bytes,
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        receptive_field=out_rf.size if out_rf is not None else None,
        jump=out_rf.jump if out_rf is not None and out.dim() == 4 else None,
        feature_map=traced.feature_map,
        notes=list(dict.fromkeys(traced.notes)),
    )


