"""Transfer learning: start from another model's weights, replace the head, freeze what the config names.

The head is the classifier layer(s) that output the classes: every nn.Linear whose out_features equal the
number of classes (GoogLeNet's and Inception's auxiliary classifiers included), or, for a model that names
its head (`head_modules`: model=torchvision, timm and hub, whose heads may be convolutions and whose
backbones may hold layers of that width), those modules. The backbone is the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn as nn

from cnnlab.engine.checkpoint import check_source
from cnnlab.errors import ConfigError

log = logging.getLogger("cnnlab")

_NORMS = (nn.modules.batchnorm._NormBase,)


def head_names(model: nn.Module, num_classes: int) -> list[str]:
    named = getattr(model, "head_modules", None)  # set by cnnlab.models.backbones
    if named:
        return list(named)
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def load_pretrained(model: nn.Module, ckpt: dict, path: Path, model_name: str, num_classes: int,
                    in_channels: int | None = None) -> list[str]:
    """Load a cnnlab checkpoint's weights (`ckpt`, read from `path`) into `model`, all but the classifier head,
    which stays freshly initialised for the new task (even with the same number of classes, its outputs mean
    other things).

    Returns the names of the tensors left freshly initialised. Any other mismatch is an error: the
    checkpoint is of another architecture.
    """
    state = ckpt["model"]
    check_source(ckpt, state, path, model_name, in_channels, f"finetune.checkpoint={path}",
                 "fine-tune with the same architecture (model={saved})", channels_key="finetune.checkpoint")
    own = model.state_dict()
    heads = head_names(model, num_classes)
    fits = {k: v for k, v in state.items()
            if k in own and own[k].shape == v.shape and not _under(k.rsplit(".", 1)[0], heads)}
    misfits = sorted((set(state) | set(own)) - set(fits))
    outside_head = [k for k in misfits if not _under(k.rsplit(".", 1)[0], heads)]
    if outside_head:
        raise ConfigError(f"finetune.checkpoint={path} does not fit the configured {model_name!r} model outside its "
                          f"classifier head (e.g. {', '.join(outside_head[:3])}); was it trained with other model keys?")
    model.load_state_dict(fits, strict=False)
    return [k for k in own if k not in fits]


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
                        if name and not list(m.children()) and not _under(name, self.heads)]
        elif not isinstance(spec, str) and hasattr(spec, "__iter__"):
            prefixes = [str(p) for p in spec]
            names = [name for name, _ in model.named_modules() if name]
            unknown = [p for p in prefixes if not any(_under(n, [p]) for n in names)]
            if unknown:
                top = ", ".join(name for name, _ in model.named_children())
                raise ConfigError(f"finetune.freeze: {', '.join(repr(p) for p in unknown)} match(es) no module of "
                                  f"this model; its top-level modules are: {top}")
        else:
            raise ConfigError(f"finetune.freeze={spec!r} is not accepted; use none, backbone or a list of "
                              "module-name prefixes, e.g. [features, layer1]")
        self.prefixes = prefixes
        self.params = [p for name, p in model.named_parameters() if _under(name.rsplit(".", 1)[0], prefixes)]
        self.norms = [m for name, m in model.named_modules() if isinstance(m, _NORMS) and _under(name, prefixes)]
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
