"""Rebuilding a trained model (and its data description) from a checkpoint, for eval, predict and resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from cnnlab.config.data_schema import DataBase
from cnnlab.config.typed import data_section
from cnnlab.data.build import data_info
from cnnlab.data.bundle import DataInfo
from cnnlab.engine.checkpoint import load_checkpoint, load_model_weights
from cnnlab.models import build_model
from cnnlab.run.restore import saved_run_config


@dataclass
class LoadedModel:
    model: torch.nn.Module
    info: DataInfo
    cfg: DictConfig
    path: Path
    epoch: int
    data: DataBase  # cfg's data section, typed (cnnlab.config.typed)


def load_trained_model(path: Path, device: torch.device, cfg: DictConfig | None = None,
                       ckpt: dict | None = None, trusted_repos: tuple[str, ...] = ()) -> LoadedModel:
    """The model described by `cfg` (default: the config saved in the checkpoint) with the saved weights.

    `cfg` given: validated by the caller. `ckpt`: the checkpoint at `path` when it is already loaded
    (`find_checkpoint` returns it), else it is read.
    `trusted_repos`: the command's --trust-repo values; a saved model=hub config (which runs its repository's
    code) loads only a repository among them.
    """
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    if cfg is None:  # the saved config alone (predict, export, explain): checked like any config before it is used
        cfg = saved_run_config(None, ckpt, path, trusted_repos=trusted_repos)[1]
    data = data_section(cfg.data)
    info = data_info(data)
    # the saved weights replace any pretrained ones: no weights file or network is needed to rebuild the model
    model = build_model(cfg.model, info.in_channels, info.num_classes, info.input_size, pretrained=False,
                        checked=True)
    load_model_weights(model, ckpt, path, cfg.model.name, info.in_channels)
    model.to(device).eval()
    return LoadedModel(model, info, cfg, path, int(ckpt.get("epoch", 0)), data)
