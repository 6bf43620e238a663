"""Freezing part of a model for fine-tuning: which layers are the classifier head, and the Freezer that holds
the others fixed (frozen batch norm kept in eval mode) until the schedule unfreezes them.

The head is the classifier layer(s) that output the classes: every nn.Linear whose out_features equal the
number of classes (GoogLeNet's and Inception's auxiliary classifiers included), or, for a model that names
its head (`head_modules`: model=torchvision, timm and hub, whose heads may be convolutions and whose
backbones may hold layers of that width), those modules. The backbone is the rest.
"""

from __future__ import annotations

import logging

import torch.nn as nn

from cnnlab.errors import ConfigError

log = logging.getLogger("cnnlab")

_NORMS = (nn.modules.batchnorm._NormBase,)


def head_names(model: nn.Module, num_classes: int) -> list[str]:
    """The names of the model's classifier head modules (see above)."""
    named = getattr(model, "head_modules", None)  # set by cnnlab.models.backbones
    if named:
        return list(named)
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


def in_modules(name: str, prefixes) -> bool:
    """`name` is one of the module names `prefixes` or lies inside one ('layer1.0' in 'layer1', not in 'layer')."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def fitting_weights(state: dict, own: dict, fresh) -> tuple[dict, list[str]]:
    """Weights for a model whose modules `fresh` (its new head, replaced stems) start afresh: the tensors of
    `state` that fit `own` by name and shape outside them, and the names outside them that do not fit (in one
    state but not the other, or of another shape), sorted. Fine-tuning and model.weights load through it."""
    outside = [k for k in sorted(set(state) | set(own)) if not in_modules(k.rsplit(".", 1)[0], fresh)]
    fits = {k: state[k] for k in outside if k in state and k in own and state[k].shape == own[k].shape}
    return fits, [k for k in outside if k not in fits]


class Freezer:
    """Which parameters finetune.freeze holds fixed, and keeping frozen batch norm in eval mode.

    spec: 'none', 'backbone' (everything but the head), or a list of module-name prefixes;
    unfreeze_after: unfreeze everything from the epoch after this one (None = never).
    """

    def __init__(self, model: nn.Module, spec, num_classes: int, unfreeze_after: int | None = None):
        self.model = model
        self.unfreeze_after = unfreeze_after
        self.heads = head_names(model, num_classes)
        if spec in (None, "none"):
            prefixes: list[str] = []
        elif spec == "backbone":
            # Every leaf module outside the head: a head nested in a container (VGG's classifier.6) leaves
            # the container's other layers frozen.
            prefixes = [name for name, m in model.named_modules()
                        if name and not list(m.children()) and not in_modules(name, self.heads)]
        elif not isinstance(spec, str) and hasattr(spec, "__iter__"):
            prefixes = [str(p) for p in spec]
            names = [name for name, _ in model.named_modules() if name]
            unknown = [p for p in prefixes if not any(in_modules(n, [p]) for n in names)]
            if unknown:
                top = ", ".join(name for name, _ in model.named_children())
                raise ConfigError(f"finetune.freeze: {', '.join(repr(p) for p in unknown)} match(es) no module of "
                                  f"this model; its top-level modules are: {top}")
        else:
            raise ConfigError(f"finetune.freeze={spec!r} is not accepted; use none, backbone or a list of "
                              "module-name prefixes, e.g. [features, layer1]")
        self.prefixes = prefixes
        self.params = [p for name, p in model.named_parameters() if in_modules(name.rsplit(".", 1)[0], prefixes)]
        self.norms = [m for name, m in model.named_modules() if isinstance(m, _NORMS) and in_modules(name, prefixes)]
        self.active = False

    def freeze(self) -> None:
        for p in self.params:
            p.requires_grad_(False)
        self.active = bool(self.params)
        if self.active:
            frozen = sum(p.numel() for p in self.params)
            total = sum(p.numel() for p in self.model.parameters())
            log.info("frozen: %s of %s parameters (%d batch-norm layers kept in eval mode)", f"{frozen:,}",
                     f"{total:,}", len(self.norms))

    def unfreeze(self) -> None:
        for p in self.params:
            p.requires_grad_(True)
        for m in self.norms:
            m.train(self.model.training)
        self.active = False

    def before_epoch(self, epoch: int) -> None:
        """Unfreeze when the schedule says so (also right for a run resumed past that epoch)."""
        if self.active and self.unfreeze_after is not None and epoch > self.unfreeze_after:
            self.unfreeze()
            log.info("epoch %d: unfreezing all layers (finetune.unfreeze_after_epochs=%d)", epoch,
                     self.unfreeze_after)

    def set_modes(self) -> None:
        """Call after model.train(): frozen batch norm keeps its running statistics."""
        if self.active:
            for m in self.norms:
                m.eval()
