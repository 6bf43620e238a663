"""Rebuilding a trained model (and its data description) from a checkpoint, for eval, predict and resume."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.data.build import data_info
from cnnlab.data.bundle import DataInfo
from cnnlab.engine.checkpoint import load_checkpoint, load_model_weights, saved_config
from cnnlab.models import build_model
from cnnlab.run.restore import check_trusted_code, repo_listed
from cnnlab.run.validate import validate


@dataclass
class LoadedModel:
    model: torch.nn.Module
    info: DataInfo
    cfg: DictConfig
    path: Path
    epoch: int


def load_trained_model(path: Path, device: torch.device, cfg: DictConfig | None = None,
                       ckpt: dict | None = None, trusted_repos: tuple[str, ...] = ()) -> LoadedModel:
    """The model described by `cfg` (default: the config saved in the checkpoint) with the saved weights.

    `ckpt`: the checkpoint at `path` when it is already loaded (`find_checkpoint` returns it), else it is read.
    `trusted_repos`: the command's --trust-repo values; a saved model=hub config (which runs its repository's
    code) loads only a repository among them.
    """
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    if cfg is None:  # the saved config alone (predict, export, explain): checked like any config before it is used
        cfg = saved_config(ckpt)
        check_trusted_code(cfg, f"the config saved in {path}", repo_listed(cfg, trusted_repos),
                           "add --trust-repo {repo} to this command")
        view = built_parts(cfg)
        if OmegaConf.is_dict(view.get("data")) and "num_workers" in view.data:
            view.data.num_workers = 0  # no data is loaded here: the machine that trained may have had more cores
        validate(view)
    info = data_info(cfg.data)
    # the saved weights replace any pretrained ones: no weights file or network is needed to rebuild the model
    model = build_model(cfg.model, info.in_channels, info.num_classes, info.input_size, pretrained=False)
    load_model_weights(model, ckpt, path, cfg.model.name, info.in_channels)
    model.to(device).eval()
    return LoadedModel(model, info, cfg, path, int(ckpt.get("epoch", 0)))


# What stands in for the sections a model rebuilt from its checkpoint never builds, for validation only.
_NEVER_BUILT = {"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                "scheduler": {"_target_": None, "interval": "epoch", "warmup_epochs": 0},
                "augment.transforms": []}


def built_parts(cfg: DictConfig) -> DictConfig:
    """The saved config as predict, export and explain use it: its data and model. The optimizer, scheduler and
    augmentation classes it names are never built by them, so they are not validated either: validating would
    import the modules they name, and with no config of the user's here no trusted_targets could vouch for them."""
    view = copy.deepcopy(cfg)  # the escaped ${...} literals stay escaped
    for key, stand_in in _NEVER_BUILT.items():
        OmegaConf.update(view, key, stand_in, merge=False, force_add=True)
    return view
