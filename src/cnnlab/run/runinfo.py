"""What a run records about itself: environment, resolved config, final metrics."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import torch

from cnnlab import __version__
from cnnlab.util.masking import mask, masked_argv
from cnnlab.util.source_tree import git_commit

_PACKAGES = ("torch", "torchvision", "hydra-core", "omegaconf", "tensorboard", "numpy", "mlxtend")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device, dist=None) -> dict:
    """What the run ran on: versions, device, threads, command line, git commit, and the world size."""
    info = {
        "cnnlab": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in _PACKAGES},
        "device": str(device),
        "world_size": dist.world_size if dist is not None else 1,
        "dist_backend": dist.backend if dist is not None else None,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "argv": masked_argv(),
        "cwd": os.getcwd(),
        "git": git_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def flat_hparams(config: dict, first=()) -> dict:
    """Scalar leaves of the config as 'group.key' -> value, for TensorBoard's HParams tab.

    `first`: config keys (the run's overrides: in a sweep, what varies) whose leaves come first, in that order;
    a group key ('optimizer') brings all its leaves. TensorBoard shows the columns in this order.
    """
    out = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                if str(k) in ("_partial_", "classes", "paths", "hydra"):
                    continue
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (list, tuple)):
            out[prefix] = mask(str(list(node)))
        elif isinstance(node, str):
            out[prefix] = mask(node)
        elif isinstance(node, (bool, int, float)):
            out[prefix] = node
    walk("", {k: v for k, v in config.items() if k not in ("paths",)})
    leading = [name for key in first for name in out if name == key or name.startswith(f"{key}.")]
    return {name: out[name] for name in dict.fromkeys([*leading, *out])}
