"""Locating the config tree and re-applying command-line overrides onto a saved run config."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.errors import ConfigError
from cnnlab.config.resolvers import register_resolvers

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/cnnlab: the wheel puts configs/ there


def config_dir() -> Path:
    """The Hydra config tree: inside the package for a wheel install, at the repo top for a source checkout."""
    for candidate in (_PACKAGE_DIR / "configs", _PACKAGE_DIR.parents[1] / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"cnnlab's config tree was not found next to {_PACKAGE_DIR}")


CONFIG_DIR = str(config_dir())


# Resolvers the config tree uses (${pid:} in hydra.run.dir), registered before Hydra composes it.
register_resolvers()


def compose_config(overrides: list[str], output_dir, config_name: str = "train") -> DictConfig:
    """Compose the config tree outside the CLI (tests, scripts), with the run dir set to `output_dir`."""
    from hydra import compose, initialize_config_dir  # Hydra, in library code: only where a config is composed
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra job (a cnnlab-tune trial): its config tree
        cfg = compose(config_name, overrides=list(overrides))
    else:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def hydra_overrides() -> list[str]:
    """The command line's overrides when running under Hydra, else none."""
    from hydra.core.hydra_config import HydraConfig  # Hydra, in library code: cnnlab-predict never loads it

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


def command_line_keys(overrides: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    """The config keys (or groups) that the given Hydra override strings set, e.g. ['optimizer', 'data.batch_size']."""
    from hydra.core.override_parser.overrides_parser import OverridesParser  # Hydra's parser: loaded on use only

    keys = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.package:  # group@package form: the values land under the package path
            key = override.package
        if key.startswith("hydra.") or key == "hydra" or key.split(".")[0] in skip:
            continue
        keys.append(key)
    return keys


def apply_overrides(saved: DictConfig, composed: DictConfig, keys: list[str]) -> DictConfig:
    """Copy the values at `keys` from the freshly composed config onto a run's saved config.

    Hydra has already parsed and typed the command line into `composed`; taking values from there keeps
    the CLI syntax of training (group choices, lists, `+new.key=...`) identical for eval and resume.
    """
    merged = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    with open_dict(merged):
        for key in keys:
            node = OmegaConf.select(composed, key, throw_on_missing=False)
            if isinstance(node, DictConfig):
                node = OmegaConf.to_container(node, resolve=True)
            OmegaConf.update(merged, key, node, merge=False, force_add=True)
    return merged


def literal(node):
    """A copy of a plain container whose strings OmegaConf reads as the text they are, never as `${...}`
    interpolations: cnnlab's configs are resolved before they are saved or instantiated, so a `${` left in
    a value is text (or something crafted) and must not be resolved a second time."""
    if isinstance(node, dict):
        return {key: literal(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [literal(value) for value in node]
    if isinstance(node, str) and "${" in node:
        # OmegaConf reads `\${` as a literal `${`; backslashes right before it are doubled to stay literal
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", node)
    return node


def instantiate_resolved(options, key: str, **kwargs):
    """hydra.utils.instantiate on a resolved config (a DictConfig or a plain container), `key` naming it.

    Hydra turns a plain dict back into a config and resolves it, more than once, so a `${...}` left in a
    value would be read as an interpolation however it is escaped (a saved config's `${oc.create:...}` would
    build a `_target_` no trust check saw). Values are resolved by now, so such a string is refused.
    _convert_="all" hands torch plain lists and dicts, not ListConfig/DictConfig.
    """
    from hydra.utils import instantiate  # Hydra's instantiate: only runs that build from a config pay its import

    if OmegaConf.is_config(options):
        options = OmegaConf.to_container(options, resolve=True)
    found = [(k, v) for k, v in _leaves(options, key) if isinstance(v, str) and "${" in v]
    if found:
        raise ConfigError([f"{k}={v!r}: a value handed to a class may not contain '${{' (it would be resolved "
                           f"again as an interpolation); use the plain value" for k, v in found])
    return instantiate(options, _convert_="all", **kwargs)


def _leaves(node, key: str):
    """(dotted key, value) of every leaf, into lists too (list items by index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        yield key, node
        return
    for name, value in items:
        yield from _leaves(value, f"{key}.{name}")


def _flatten(node, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix[:-1], node


def flat_differences(a, b) -> list[tuple[str, object, object]]:
    """(dotted key, value in a, value in b) for every leaf that differs (lists compared whole)."""
    fa = dict(_flatten(OmegaConf.to_container(a, resolve=True) if not isinstance(a, dict) else a))
    fb = dict(_flatten(OmegaConf.to_container(b, resolve=True) if not isinstance(b, dict) else b))
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def targets(cfg) -> list[tuple[str, str]]:
    """(dotted key, class path) of every non-null `_target_` in a config, including inside lists."""
    container = OmegaConf.to_container(cfg, resolve=False) if not isinstance(cfg, (dict, list)) else cfg
    found = []

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_":
                    if value is not None:  # `_target_: null` (scheduler=none) instantiates nothing
                        found.append((f"{prefix}_target_", value))
                else:
                    walk(value, f"{prefix}{key}.")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{prefix}{i}.")

    walk(container, "")
    return found
