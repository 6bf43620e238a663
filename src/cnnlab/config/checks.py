"""Checking a config against `cnnlab.config.schema` after Hydra has composed it: types, choices, ranges, NaN and
unknown keys (also keys added with `+`), every problem as one line that names its key (`cnnlab.config.messages`).

The model section is the zoo's to check (`cnnlab.models.model_config_problems`, run by `cnnlab.run.validate`):
this module offers it `keyword_problems`, the typing of a section's keys by a callable's signature. Overrides of
keys no config file has are refused before Hydra starts (`cnnlab.config.overrides`).
"""

from __future__ import annotations

import inspect
import typing
from functools import lru_cache

from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, create_model

from cnnlab.config import schema
from cnnlab.config.data_schema import DATA_SOURCES
from cnnlab.config.training_schema import OPTIMIZER_OWN_KEYS, SCHEDULER_OWN_KEYS, Optimizer, Scheduler
from cnnlab.config.messages import closest, nonfinite, schema_problems
from cnnlab.util.dotted import import_parent


def config_problems(cfg, kind: str = "train") -> list[str]:
    """Everything in `cfg` (a composed DictConfig or a plain dict) that the schema refuses."""
    try:
        container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    except Exception as bad:  # an interpolation that cannot be resolved
        return [f"the config cannot be resolved: {str(bad).splitlines()[0]}"]
    container = missing_to_none(container)
    problems = schema_problems(schema.CONFIGS[kind], container)
    if isinstance(container.get("data"), dict):
        problems += _data_problems(container["data"])
    if isinstance(container.get("optimizer"), dict):
        problems += _class_section_problems(container["optimizer"], "optimizer", Optimizer,
                                            OPTIMIZER_OWN_KEYS, supplied=("params",))
    if isinstance(container.get("scheduler"), dict):
        problems += _class_section_problems(container["scheduler"], "scheduler", Scheduler,
                                            SCHEDULER_OWN_KEYS, supplied=("optimizer",))
    augment = container.get("augment")
    if isinstance(augment, dict) and isinstance(augment.get("transforms"), list):
        problems += nonfinite(augment["transforms"], "augment.transforms")
    return problems


def command_key_problems(cfg, kind: str) -> list[str]:
    """Problems of the keys a command adds to the training config (cnnlab-eval's ckpt and split) only: the
    rest of its config stands for the checkpoint's saved config, which is checked once the two are merged."""
    own = set(schema.CONFIGS[kind].model_fields) - set(schema.TrainConfig.model_fields)
    container = missing_to_none(OmegaConf.to_container(cfg, resolve=True))
    return [p for p in schema_problems(schema.CONFIGS[kind], container) if p.split("=")[0].split(" ")[0] in own]


def missing_to_none(node):
    """Mandatory values not given (`???`) count as null here; the rule that needs them names them."""
    if isinstance(node, dict):
        return {k: missing_to_none(v) for k, v in node.items()}
    if isinstance(node, list):
        return [missing_to_none(v) for v in node]
    return None if node == "???" else node


def _data_problems(data: dict) -> list[str]:
    name = data.get("name")
    family = DATA_SOURCES.get(name) if isinstance(name, str) else None
    if family is None:
        return [f"data.name={name!r} is not a known data source; choose one of {', '.join(sorted(DATA_SOURCES))}"]
    return schema_problems(family, data, prefix="data.")


def _class_section_problems(section: dict, key: str, model: type[BaseModel], own: tuple[str, ...],
                            supplied: tuple[str, ...]) -> list[str]:
    """Typed keys against the schema; every other key must be an argument of the `_target_` class."""
    problems = schema_problems(model, section, prefix=f"{key}.")
    target = section.get("_target_")
    others = [k for k in section if k not in own]
    if not isinstance(target, str) or not target:
        return problems + [f"{key}.{k} is not a key of a {key} without a _target_ class" for k in others
                           if section[k] is not None]
    cls = _import_class(target)
    if cls is None:
        return problems + [f"{key}._target_={target!r} is not a class that can be imported"]
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return problems
    accepted = [p for p in params if p not in supplied and p != "self"]
    for k in others:
        if k not in accepted:
            guess = closest(k, accepted)
            hint = f"did you mean {key}.{guess}? " if guess else ""
            problems.append(f"{key}.{k} is not an argument of {target}; {hint}it takes {', '.join(accepted)}")
    extras = {k: v for k, v in section.items() if k not in model.model_fields and k not in own}
    return problems + nonfinite(extras, key)


def _import_class(path: str):
    try:
        module, name = import_parent(path)
        obj = getattr(module, name, None)
    except ImportError:
        return None
    return obj if inspect.isclass(obj) else None


# ---- keys typed by a callable's signature (the zoo entry's builder for the model section) ----
_SIMPLE_TYPES = (int, float, bool, str)


def keyword_problems(builder, section, key: str) -> list[str]:
    """The keys of `section` (a config section or a plain dict) that `builder` takes as keyword arguments annotated
    plain int/float/bool/str, against those types; NaN or infinity in its other keys (in every key for builder
    None). One line each, named `key.<name>`."""
    try:
        values = OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else dict(section)
    except Exception:  # an interpolation that cannot be resolved: config_problems names it
        return []
    values = missing_to_none(values)
    if builder is None:
        return nonfinite(values, key)
    typed = _builder_schema(builder)
    keys = {k: v for k, v in values.items() if k in typed.model_fields}
    untyped = {k: v for k, v in values.items() if k not in typed.model_fields}
    return schema_problems(typed, keys, prefix=f"{key}.") + nonfinite(untyped, key)


@lru_cache(maxsize=None)
def _builder_schema(builder) -> type[BaseModel]:
    """A pydantic model of a builder's keyword arguments whose annotations are plain int/float/bool/str."""

    try:
        hints = typing.get_type_hints(builder)
    except Exception:  # an annotation that cannot be resolved: leave those keys to the builder
        hints = {}
    fields = {}
    for param in inspect.signature(builder).parameters.values():
        hint = hints.get(param.name)
        if hint in _SIMPLE_TYPES:
            default = None if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (typing.Optional[hint] if default is None else hint, default)
    config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")
    return create_model(f"keywords_{getattr(builder, '__name__', 'builder')}", __config__=config, **fields)
