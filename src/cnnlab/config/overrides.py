"""Before Hydra starts: refuse `key=value` overrides of keys that no file of the config tree has, naming the
closest key. Hydra refuses an override of a key that does not exist (`trainer.max_epoch=3`) with its own message
and exit status 1, without the key the user meant; keys added with `+` are checked after composition
(`cnnlab.config.checks`)."""

from __future__ import annotations

import fnmatch
import typing
from functools import lru_cache
from pathlib import Path

import yaml

from cnnlab.config import schema
from cnnlab.config.data_schema import DATA_SOURCES
from cnnlab.config.training_schema import Optimizer, Scheduler
from cnnlab.config.messages import closest, fields_by_key, model_in, unwrap
from cnnlab.errors import ConfigError

_FLAGS_WITH_VALUE = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-c", "--cfg",
                     "-p", "--package", "--experimental-rerun")


def split_override(arg: str) -> tuple[str, str, bool]:
    """One command-line override as Hydra reads it: `[+|++|~]key[=value]` -> (key without the prefix, value,
    whether it had `=`). Every place that looks at the command line's keys before or beside Hydra reads them so."""
    key, sep, value = str(arg).partition("=")
    return key.lstrip("+~"), value, bool(sep)


def override_key(arg: str) -> str:
    """The key an override sets: `+a.b=1`, `++a.b=1`, `~a.b` and `a.b=1` all set `a.b`."""
    return split_override(arg)[0]


def without_hydra(args: list[str]) -> list[str]:
    """The overrides that are not Hydra's own (`hydra.run.dir=...`, `hydra.job.chdir=...`)."""
    return [a for a in args if not override_key(a).startswith("hydra.")]


def check_override_keys(args: list[str], config_dir: Path, config_name: str = "train") -> None:
    """Refuse `key=value` overrides whose key no file of the config tree has, naming the closest key.

    Hydra only accepts overriding keys that exist; a key that exists in another option of its group
    (optimizer.momentum with optimizer=adam) is left to Hydra's own message. Keys added with `+` are
    checked against the schema after composition.
    """
    problems = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        if arg.startswith("-"):
            skip_next = arg in _FLAGS_WITH_VALUE
            continue
        key, sep, _ = arg.partition("=")
        if not sep or key.startswith(("+", "~", "hydra.", "hydra/")) or key == "hydra" or "/" in key or "@" in key:
            continue
        if key in _schema_keys(config_name):
            continue  # declared keys need no file reading
        known = _tree_keys(str(config_dir), config_name, key.split(".")[0])
        if not _known(key, known) and any(fnmatch.fnmatchcase(key, k) for k in _schema_keys(config_name) if "*" in k):
            # a key the schema allows in a named entry (search.space.lr.step) that this entry's file leaves out
            problems.append(f"{key} is not set in the config files, so Hydra cannot override it: add it with "
                            f"+{arg}")
        elif not _known(key, known):
            parent, _, name = key.rpartition(".")
            siblings = sorted({k[len(parent) + 1:].split(".")[0] for k in known
                               if parent and k.startswith(parent + ".")} if parent else
                              {k.split(".")[0] for k in known})
            guess = closest(name, siblings)
            hint = f"; did you mean {parent + '.' if parent else ''}{guess}?" if guess else ""
            problems.append(f"{key} is not a config key{hint}")
    if problems:
        raise ConfigError(problems)


@lru_cache(maxsize=None)
def _schema_keys(config_name: str) -> frozenset[str]:
    """Every dotted key the schema declares for this command (all data sources, optimizer and scheduler)."""
    keys: set[str] = set()

    def walk(model, prefix):
        for key, info in fields_by_key(model).items():
            keys.add(prefix + key)
            inner = model_in(info.annotation)
            if inner is not None:  # a section, or a mapping of named sections (search.space.<name>.low)
                named = typing.get_origin(unwrap(info.annotation)) is dict
                walk(inner, f"{prefix}{key}.*." if named else f"{prefix}{key}.")

    walk(schema.CONFIGS.get(config_name, schema.TrainConfig), "")
    for section, model in [("data", m) for m in set(DATA_SOURCES.values())] + [
            ("optimizer", Optimizer), ("scheduler", Scheduler)]:
        walk(model, f"{section}.")
    return frozenset(keys)


def _known(key: str, known: frozenset[str]) -> bool:
    """The key itself, or an item inside a list the tree has (augment.transforms.1.p)."""
    if key in known:
        return True
    parts = key.split(".")
    return any(".".join(parts[:i]) + "[]" in known for i in range(1, len(parts)))


@lru_cache(maxsize=None)
def _tree_keys(config_dir: str, config_name: str, group: str) -> frozenset[str]:
    """Every dotted key that the top-level files, the experiments and the files of `group` set (group files
    under their package, with the files their defaults list includes `@_here_`), plus the group names."""
    root = Path(config_dir)
    keys: set[str] = {p.name for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "base")}
    for name in dict.fromkeys(("train", config_name)):
        _collect(_load(root / f"{name}.yaml"), "", keys)
    for path in [*(root / "experiment").glob("*.yaml"), *((root / group).rglob("*.yaml") if group in keys else [])]:
        relative = path.relative_to(root)
        keys.add(".".join(relative.parts[:-1]))  # a group name (data, augment.mix) is a key too
        node = _load(path)
        first = path.read_text().split("\n", 1)[0]
        package = "" if "@package _global_" in first else ".".join(relative.parts[:-1])
        _collect(node, package, keys)
        for entry in node.get("defaults", []) if isinstance(node, dict) else []:
            if isinstance(entry, str) and entry.endswith("@_here_"):  # e.g. /base/data@_here_
                name = entry[: -len("@_here_")]
                included = root / f"{name.lstrip('/')}.yaml" if name.startswith("/") else path.parent / f"{name}.yaml"
                if included.is_file():
                    _collect(_load(included), package, keys)
    return frozenset(keys)


def _load(path: Path):
    """A YAML file's keys (PyYAML directly: OmegaConf.load is ten times slower and values don't matter here)."""
    return yaml.safe_load(path.read_text()) or {}


def _collect(node, prefix: str, keys: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "defaults" or k == "hydra":
                continue
            key = f"{prefix}.{k}" if prefix else str(k)
            keys.add(key)
            _collect(v, key, keys)
    elif isinstance(node, list):
        keys.add(prefix + "[]")

