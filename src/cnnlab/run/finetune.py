"""Transfer learning: start from another model's weights with a fresh classifier head (cnnlab.engine.freezing
says which layers the head is and freezes what the config names)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from cnnlab.engine.checkpoint import check_source
from cnnlab.engine.freezing import fitting_weights, head_names
from cnnlab.errors import ConfigError


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
    fits, outside_head = fitting_weights(state, own, heads)
    if outside_head:
        raise ConfigError(f"finetune.checkpoint={path} does not fit the configured {model_name!r} model outside its "
                          f"classifier head (e.g. {', '.join(outside_head[:3])}); was it trained with other model keys?")
    model.load_state_dict(fits, strict=False)
    return [k for k in own if k not in fits]
