"""Configs saved by earlier cnnlab versions brought to the current keys, one numbered step per config version.

A checkpoint records the version of the config it holds under CONFIG_VERSION_KEY, a top-level key beside
`format_version` (the layout of the file) and `config_hash`; the config itself is the run's config as it was.
A checkpoint without that key is version 0: every release before versioned configs. Every saved config is
read through `migrate`, which applies the steps after its version in order, so the code that uses a config
finds every key the schema has and never supplies a default for an old file itself.

A step takes a plain config dict and changes it in place: it adds the keys that appeared, each with the value
that reproduces what the older version did without it, and renames or moves keys. A step never overwrites a
key that is there: applying it twice, or to a config that already has its keys, changes nothing. A config
of a version newer than CONFIG_VERSION is refused (its keys may mean something this version does not know).

Adding a step: write `_to_vN` (docstring: the commit and what changed), add it to STEPS as N, set
CONFIG_VERSION = N; tests/test_saved_config_migration.py checks every step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

from cnnlab.errors import ConfigError

CONFIG_VERSION = 3
CONFIG_VERSION_KEY = "config_version"

# Version 0 -> 1: the keys that appeared up to the first versioned release, oldest first: (commit, what it added,
# {dotted key: value when absent}, the data sources it applies to or None for all). Each value is the one the code
# used for a config without the key. Checkpoints older than bcb9ed2 (2026-12-01) carry no config_hash and are
# refused by engine.checkpoint.load_checkpoint, so a readable version 0 config lacks at most these keys (the
# first two predate that commit but were the schema's to tolerate).
V1_ADDITIONS: tuple[tuple[str, str, dict, tuple[str, ...] | None], ...] = (
    ("0fa5d87", "the model summary at the start of a run", {"trainer.summary": "full"}, None),
    ("bcb9ed2", "run dirs claimed, never shared", {"paths.existing_run": "refuse"}, None),
    ("2ca401d", "TensorBoard's embedding projector",
     {"logger.projector": False, "logger.projector_max_samples": 1000}, None),
    ("dc415ad", "TF32 matmuls and gradient accumulation",
     {"trainer.tf32": True, "trainer.accumulate_grad_batches": 1}, None),
    ("dc17fad", "data-parallel training",
     {"trainer.sync_batchnorm": False, "trainer.dist_backend": "auto"}, None),
    ("ec3e45e", "class imbalance: weights, a balanced sampler, per-class caps",
     {"trainer.class_weights": None, "data.sampler": "random", "data.max_per_class": None}, None),
    ("50fd922", "averaged weights",
     {"trainer.ema": {"enabled": False, "decay": 0.9998, "warmup": True, "every_n_steps": 1},
      "trainer.swa": {"enabled": False, "start_epoch": 1, "lr": None, "anneal_epochs": 5,
                      "anneal_strategy": "cos"}}, None),
    ("babe49a", "the k best checkpoints", {"trainer.checkpoint.save_top_k": 0}, None),
    ("fcc8a18", "trusted hub repositories", {"trusted_repos": []}, None),
    ("1a353e6", "shorter validation and test passes",
     {"trainer.limit_val_batches": None, "trainer.limit_test_batches": None}, None),
    ("c66e018", "the decoded image cache", {"data.cache": True, "data.cache_dir": None}, ("imagefolder",)),
)


def add_missing(config: dict, key: str, value) -> None:
    """Set dotted `key` to (a copy of) `value` where it is absent; a parent that is absent or not a mapping is left
    alone (validation names what is wrong with it)."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.get(part)
        if not isinstance(node, dict):
            return
    if last not in node:
        node[last] = copy.deepcopy(value)


def _to_v1(config: dict) -> None:
    """Version 0 -> 1: every key of V1_ADDITIONS that the config lacks, with the value of the release before it;
    the data cache keys only for data.name=imagefolder (other sources never had them)."""
    data = config.get("data")
    name = data.get("name") if isinstance(data, dict) else None
    for _commit, _what, keys, sources in V1_ADDITIONS:
        if sources is not None and name not in sources:
            continue
        for key, value in keys.items():
            add_missing(config, key, value)


# Version 1 -> 2: MLflow beside TensorBoard (logger=[tensorboard,mlflow], the release after 424c76e). The
# TensorBoard keys keep their place at the top of `logger`; MLflow's are a new section under it, off.
V2_ADDITIONS: dict[str, object] = {
    "logger.mlflow": {"enabled": False, "tracking_uri": None, "experiment": "cnnlab", "run_name": None,
                      "log_checkpoints": False, "timeout_s": 10},
}


def _to_v2(config: dict) -> None:
    """Version 1 -> 2: the logger.mlflow section, off (no run of an earlier version logged to MLflow); a section
    that is there keeps its keys and gains the missing ones."""
    for key, value in V2_ADDITIONS.items():
        add_missing(config, key, value)
        for sub, default in value.items():
            add_missing(config, f"{key}.{sub}", default)


# Version 2 -> 3: batch-norm statistics recomputed before validation (trainer.bn_recalibrate), off before.
V3_ADDITIONS: dict[str, object] = {"trainer.bn_recalibrate": 0}


def _to_v3(config: dict) -> None:
    """Version 2 -> 3: trainer.bn_recalibrate, 0 (off: earlier versions validated with the running statistics)."""
    for key, value in V3_ADDITIONS.items():
        add_missing(config, key, value)


# STEPS[n] turns a version n-1 config into a version n one.
STEPS: dict[int, Callable[[dict], None]] = {1: _to_v1, 2: _to_v2, 3: _to_v3}


def check_version(version, source: str = "the saved config") -> int:
    """`version` as this cnnlab reads it: an integer from 0 to CONFIG_VERSION, else one line saying why not."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ConfigError(f"{source}: {CONFIG_VERSION_KEY}={version!r} is no config version (an integer >= 0); the "
                          f"file was not written by cnnlab")
    if version > CONFIG_VERSION:
        raise ConfigError(f"{source}: config version {version} is newer than this cnnlab reads (up to "
                          f"{CONFIG_VERSION}); upgrade cnnlab to use it")
    return version


def migrate(saved: Mapping, version=0, source: str = "the saved config") -> dict:
    """The current config for `saved`, a config of `version` (0: written before configs had versions): a new dict
    with STEPS version+1 .. CONFIG_VERSION applied in order. Idempotent: a current config comes back equal."""
    version = check_version(version, source)
    config = copy.deepcopy(dict(saved))
    for step in range(version + 1, CONFIG_VERSION + 1):
        STEPS[step](config)
    return config


def checkpoint_config(ckpt: Mapping, source: str = "the checkpoint") -> dict:
    """A loaded checkpoint's config, migrated from the version it records (none: version 0)."""
    return migrate(ckpt["config"], ckpt.get(CONFIG_VERSION_KEY, 0), source)
