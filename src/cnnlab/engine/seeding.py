"""Seeds and RNG state: what makes a run reproducible and a resumed run identical to an uninterrupted one."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def derived_generator(seed: int, *salt: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, salt...): e.g. (seed, epoch) gives every epoch its own fixed shuffle,
    so a run resumed at epoch k draws exactly what the uninterrupted run drew."""
    value = seed
    for s in salt:
        value = (value * 1_000_003 + s) % (2**63 - 1)
    generator = torch.Generator(device=device)
    generator.manual_seed(value)
    return generator


def seed_sample(seed: int, epoch: int, index: int) -> None:
    """Per-sample transforms draw from torch's global RNG: seed it from (run seed, epoch, sample index), so a
    sample's augmentation is the same whichever worker decodes it, in whatever order, in a resumed run too."""
    value = (seed * 1_000_003 + epoch) % (2**63 - 1)
    # The CPU generator alone (what v2 transforms draw from): torch.manual_seed also seeds every accelerator
    # and costs ~60 us, which at one call per sample halved the DataLoader path's throughput.
    torch.default_generator.manual_seed((value * 1_000_003 + index) % (2**63 - 1))


def transform_sample(transform, x: torch.Tensor, seed: int, epoch: int | None, index: int) -> torch.Tensor:
    """Apply a per-sample transform, seeded from (seed, epoch, index) when the epoch is known."""
    if transform is None:
        return x
    if epoch is not None:
        seed_sample(seed, epoch, index)
    return transform(x)


def rng_state() -> dict:
    """All global RNG states, in types that torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    # random.setstate wants nested tuples; a checkpoint round-trip may hand back lists.
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value
