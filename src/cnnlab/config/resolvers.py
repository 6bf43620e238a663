"""The OmegaConf resolvers cnnlab's config tree uses (${pid:} in hydra.run.dir), registered before Hydra composes it."""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def register_resolvers() -> None:
    """`${pid:}`: this process's id, which no other process running on this machine has. Cached like Hydra's
    `${now:...}`, so every job of a sweep resolves the same sweep dir. Pure: resolving it creates nothing
    (OmegaConf also resolves a value that an override replaces)."""
    OmegaConf.register_new_resolver("pid", lambda: str(os.getpid()), use_cache=True, replace=True)
