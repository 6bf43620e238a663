"""Seeded, stratified train/val/test splits for sets that come as one pool."""

from __future__ import annotations

import torch

from cnnlab.errors import ConfigError


def stratified_split(labels: torch.Tensor, val: float, test: float, seed: int) -> dict[str, torch.Tensor]:
    """Index tensors for 'train', 'val', 'test'; each class is split in the same proportions.

    The same labels and seed always give the same split, whatever else the run changes.
    """
    for key, value in (("val", val), ("test", test)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"data.split.{key}={value} must be a fraction in [0, 1)")
    if val + test >= 1.0:
        raise ConfigError(f"data.split.val + data.split.test = {val + test:g} leaves nothing to train on; keep it below 1")
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_test, n_val = round(len(idx) * test), round(len(idx) * val)
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    out = {}
    for name, chunks in parts.items():
        joined = torch.cat(chunks)
        # Sort so a split's order does not depend on class order; loaders shuffle training data anyway.
        out[name] = joined.sort().values
    return out
