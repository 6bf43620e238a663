"""The search space of `cnnlab-tune`: `search.space` as Optuna distributions and as training overrides.

Each entry of `search.space` names one trial parameter (`key`, `type`, `low`/`high`, `log`, `step`, `choices`:
docs/experiments.md, "What a search declares"). The schema (cnnlab.config.schema.SearchParam) checks types; the
rules between an entry's keys, and whether its key exists, are checked here, every problem at once, before any
trial runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from cnnlab.config.messages import closest


@dataclass(frozen=True)
class Param:
    """One trial parameter: its Optuna name and distribution, and the config key or group it sets."""

    name: str
    key: str
    group: bool                 # the key is a config group: the value picks one of its options
    distribution: BaseDistribution

    def override(self, value) -> str:
        """The Hydra override that sets this parameter to `value` (`optimizer.lr=0.0123`, `model=convnet`)."""
        return f"{self.key}={hydra_value(value)}"

    def ends(self) -> list:
        """The values at the ends of the range (every choice of a categorical): what the config must accept."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return list(d.choices)
        return [d.low, d.high]

    def grid(self) -> list | None:
        """Every value of this parameter, where it has finitely many (categorical, or a step); else None."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return list(d.choices)
        if isinstance(d, IntDistribution):
            return list(range(d.low, d.high + 1, d.step))
        if isinstance(d, FloatDistribution) and d.step is not None:
            count = int(round((d.high - d.low) / d.step)) + 1
            return [round(d.low + i * d.step, 12) for i in range(count)]
        return None


def hydra_value(value) -> str:
    """A value as Hydra's override grammar reads it back as the same value and type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same float, e.g. 0.0031622776601683794
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if text.replace("_", "").replace("-", "").replace(".", "").isalnum() and not _reads_as_other_type(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _reads_as_other_type(text: str) -> bool:
    """Whether Hydra would read this string as a number, bool or null."""
    if text.lower() in ("true", "false", "null", "nan", "inf", "-inf"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_space(space: dict, groups: set[str]) -> tuple[list[Param], list[str]]:
    """The parameters of `search.space` (a plain dict of schema-checked entries) and every problem found.

    groups: the config groups (directories of the config tree, e.g. "model", "augment/mix"), whose options a
    categorical parameter may choose.
    """
    params, problems = [], []
    for name, entry in space.items():
        where = f"search.space.{name}"
        kind, low, high, log, step = (entry.get(k) for k in ("type", "low", "high", "log", "step"))
        choices = entry.get("choices")
        key = str(entry["key"])
        group = key.replace(".", "/") in groups and kind == "categorical"
        if kind == "categorical":
            if not choices:
                problems.append(f"{where}.choices must list the values of a categorical parameter")
                continue
            if any(entry.get(k) not in (None, False) for k in ("low", "high", "step", "log")):
                problems.append(f"{where}: a categorical parameter takes choices, not low/high/step/log")
                continue
            if len(set(map(repr, choices))) != len(choices):
                problems.append(f"{where}.choices={choices!r} lists a value twice")
                continue
            params.append(Param(name, key.replace(".", "/") if group else key, group,
                                CategoricalDistribution(list(choices))))
            continue
        if choices:
            problems.append(f"{where}.choices is for type=categorical; a {kind} parameter takes low and high")
            continue
        if low is None or high is None:
            problems.append(f"{where}: a {kind} parameter needs both low and high")
            continue
        if not low < high:
            problems.append(f"{where}: low={low!r} must be below high={high!r}")
            continue
        if log and low <= 0:
            problems.append(f"{where}: log=true needs low > 0 (a log scale has no zero or negatives), got low={low!r}")
            continue
        if log and step is not None:
            problems.append(f"{where}: step and log=true cannot be combined (Optuna samples either on a log scale "
                            f"or on a grid of steps)")
            continue
        if kind == "int":
            if not all(isinstance(v, int) for v in (low, high)) or (step is not None and not isinstance(step, int)):
                problems.append(f"{where}: an int parameter needs integer low, high and step")
                continue
            params.append(Param(name, key, False, IntDistribution(low, high, log=bool(log), step=step or 1)))
            continue
        if step is not None and not math.isclose((high - low) / step, round((high - low) / step), abs_tol=1e-9):
            problems.append(f"{where}: high - low = {high - low!r} is not a whole number of steps of {step!r}")
            continue
        params.append(Param(name, key, False, FloatDistribution(float(low), float(high), log=bool(log),
                                                                step=None if step is None else float(step))))
    return params, problems


def key_problems(params: list[Param], variants: list[DictConfig], group_options) -> list[str]:
    """Parameters whose key no variant of the training config has (the variants: the config with each group
    choice of the space), or whose group option does not exist. group_options(group) -> the option names."""
    problems = []
    for p in params:
        where = f"search.space.{p.name}"
        if p.group:
            options = group_options(p.key)
            unknown = [c for c in p.distribution.choices if c not in options]
            if unknown:
                problems.append(f"{where}.choices: {', '.join(map(str, unknown))} is not an option of the config "
                                f"group {p.key} (options: {', '.join(sorted(options))})")
            continue
        if not any(has_key(cfg, p.key) for cfg in variants):
            parent, _, leaf = p.key.rpartition(".")
            node = OmegaConf.select(variants[0], parent) if parent else variants[0]
            known = list(node.keys()) if isinstance(node, DictConfig) else []
            hint = closest(leaf, known)
            problems.append(f"{where}.key={p.key} is not a key of the training config"
                            + (f"; did you mean {parent + '.' if parent else ''}{hint}?" if hint else ""))
    return problems


def has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the config has this dotted key (with any value, null included)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node


def config_groups(config_dir: Path) -> set[str]:
    """The config groups of the tree (directories holding option files), e.g. {"model", "augment/mix"}."""
    return {str(d.relative_to(config_dir)) for d in config_dir.rglob("*") if d.is_dir() and any(d.glob("*.yaml"))}


def group_options(config_dir: Path, group: str) -> set[str]:
    return {f.stem for f in (config_dir / group).glob("*.yaml")}
