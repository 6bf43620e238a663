"""Checking a config against `cnnlab.config.schema`: every problem as one line that names its key.

Two moments: `config_problems` after Hydra has composed the config (types, choices, ranges, NaN, unknown
keys, also keys added with `+`), and `check_override_keys` before Hydra starts, because Hydra refuses an
override of a key that does not exist (`trainer.max_epoch=3`) with its own message and exit status 1,
without the key the user meant.
"""

from __future__ import annotations

import difflib
import fnmatch
import contextlib
import inspect
import math
import signal
import threading
import types
import typing
from functools import lru_cache
from pathlib import Path

import yaml
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from cnnlab.config import schema
from cnnlab.util.dotted import import_parent
from cnnlab.errors import ConfigError


def config_problems(cfg, kind: str = "train") -> list[str]:
    """Everything in `cfg` (a composed DictConfig or a plain dict) that the schema refuses."""
    try:
        container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    except Exception as bad:  # an interpolation that cannot be resolved
        return [f"the config cannot be resolved: {str(bad).splitlines()[0]}"]
    container = _missing_to_none(container)
    problems = _problems(schema.CONFIGS[kind], container)
    if isinstance(container.get("data"), dict):
        problems += _data_problems(container["data"])
    if isinstance(container.get("optimizer"), dict):
        problems += _class_section_problems(container["optimizer"], "optimizer", schema.Optimizer,
                                            schema.OPTIMIZER_OWN_KEYS, supplied=("params",))
    if isinstance(container.get("scheduler"), dict):
        problems += _class_section_problems(container["scheduler"], "scheduler", schema.Scheduler,
                                            schema.SCHEDULER_OWN_KEYS, supplied=("optimizer",))
    if isinstance(container.get("model"), dict):
        problems += _model_type_problems(container["model"])
    augment = container.get("augment")
    if isinstance(augment, dict) and isinstance(augment.get("transforms"), list):
        problems += _nonfinite(augment["transforms"], "augment.transforms")
    return problems


def command_key_problems(cfg, kind: str) -> list[str]:
    """Problems of the keys a command adds to the training config (cnnlab-eval's ckpt and split) only: the
    rest of its config stands for the checkpoint's saved config, which is checked once the two are merged."""
    own = set(schema.CONFIGS[kind].model_fields) - set(schema.TrainConfig.model_fields)
    container = _missing_to_none(OmegaConf.to_container(cfg, resolve=True))
    return [p for p in _problems(schema.CONFIGS[kind], container) if p.split("=")[0].split(" ")[0] in own]


def _missing_to_none(node):
    """Mandatory values not given (`???`) count as null here; the rule that needs them names them."""
    if isinstance(node, dict):
        return {k: _missing_to_none(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_missing_to_none(v) for v in node]
    return None if node == "???" else node


@contextlib.contextmanager
def _ctrl_c_deferred():
    """Hold Ctrl-C until the block ends. pydantic builds a deferred schema on first use in Rust code that calls
    back into Python; a KeyboardInterrupt raised there comes out as a SchemaError and a traceback, not as the
    interrupt the entry point reports in one line."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt here
    elif caught and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


def _problems(model: type[BaseModel], data: dict, prefix: str = "") -> list[str]:
    try:
        with _ctrl_c_deferred():
            model.model_validate(data)
    except ValidationError as invalid:
        return _messages(model, data, invalid.errors(), prefix)
    return []


def _messages(model: type[BaseModel], data: dict, errors: list[dict], prefix: str) -> list[str]:
    """One line per key, in the order pydantic found them."""
    lines: dict[str, str] = {}
    for error in errors:
        path, field, parent = _locate(model, error["loc"])
        key = prefix + ".".join(path)
        if key in lines:
            continue
        value = _value_at(data, path)
        kind = error["type"]
        if kind == "extra_forbidden":
            lines[key] = f"{key} is not a config key{_suggestion(path[-1], _field_names(parent), prefix, path[:-1])}"
        elif kind == "missing":
            lines[key] = f"{key} is missing"
        elif kind == "too_short" and value == [] and isinstance(error.get("ctx"), dict):
            lines[key] = _empty_list(key, field, int(error["ctx"].get("min_length", 1)))
        elif kind == "finite_number":
            lines[key] = f"{key}={value!r} is not a finite number: it {_requirement(field)}"
        else:
            lines[key] = f"{key}={value!r} {_requirement(field)}"
    return list(lines.values())


def _empty_list(key: str, field, least: int) -> str:
    """`key=[]` where at least `least` values are needed: say that it is the emptiness that is refused."""
    choices = _literal_choices(field.annotation) if field is not None else ()
    wanted = "one" if least == 1 else str(least)
    if choices:
        return f"{key}=[] is an empty list: give at least {wanted} of {', '.join(str(c) for c in choices)}"
    return (f"{key}=[] is an empty list: give at least {wanted} value{'s' if least > 1 else ''} "
            f"({key} {_requirement(field)})")


def _locate(model: type[BaseModel], loc: tuple):
    """The config path of an error (list indices and union branches dropped), its FieldInfo (None for an
    unknown key) and the model that holds it."""
    path, field, parent, current = [], None, model, model
    named = False  # the part before was a mapping of named sections (search.space): this part is a name
    for part in loc:
        if not isinstance(part, str) or current is None:
            break  # a list index, or a union branch's tag below a plain field
        path.append(part)
        if named:
            named = False
            continue
        fields = _fields_by_key(current)
        parent = current
        if part not in fields:  # a key the section does not have
            field = None
            break
        field = fields[part]
        current = _model_in(field.annotation)
        named = current is not None and typing.get_origin(_unwrap(field.annotation)) is dict
    return path, field, parent


def _fields_by_key(model) -> dict:
    return {(info.alias or name): info for name, info in model.model_fields.items()}


def _field_names(model) -> list[str]:
    return list(_fields_by_key(model)) if model is not None else []


def _unwrap(annotation):
    """Optional[X] / Annotated[X, ...] -> X."""
    while typing.get_origin(annotation) in (typing.Annotated, typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0]
    return annotation


def _model_in(annotation):
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _value_at(data, path: list[str]):
    for part in path:
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _requirement(field) -> str:
    """The sentence that ends a field's message: its description, else its Literal choices, else its type."""
    if field is None:
        return "is not accepted"
    found = _description(field.annotation) if field.description is None else field.description
    if found:
        return found
    choices = _literal_choices(field.annotation)
    if choices:
        return f"is not accepted; choose one of {', '.join(str(c) for c in choices)}"
    base = [a for a in (typing.get_args(field.annotation) or (field.annotation,)) if a is not type(None)]
    if base and base[0] is bool:
        return "must be true or false"
    if base and base[0] is str:
        return "must be a string"
    if base and base[0] in (int, float):
        return "must be an integer" if base[0] is int else "must be a number"
    return "is not accepted"


def _description(annotation) -> str | None:
    for arg in typing.get_args(annotation):
        if getattr(arg, "description", None):
            return arg.description
        found = _description(arg)
        if found:
            return found
    return None


def _literal_choices(annotation) -> tuple:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        found = _literal_choices(arg)
        if found:
            return found
    return ()


def closest(name: str, candidates) -> str | None:
    """The candidate a mistyped `name` most likely meant: by spelling, else as an abbreviation
    (learning_rate -> lr), else None."""
    candidates = [str(c) for c in candidates]
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if match:
        return match[0]
    initials = "".join(word[0] for word in name.split("_") if word)
    for candidate in candidates:
        if candidate == initials or candidate.replace("_", "") == initials:
            return candidate
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.45)
    return match[0] if match else None


def _suggestion(name: str, siblings: list[str], prefix: str, parent: list[str]) -> str:
    where = (prefix + ".".join(parent)).rstrip(".")
    dotted = f"{where}." if where else ""
    guess = closest(name, [s for s in siblings if not s.startswith("_")])
    if guess:
        return f"; did you mean {dotted}{guess}?"
    shown = ", ".join(s for s in siblings if not s.startswith("_"))
    return f"; {where or 'the top level'} has: {shown}"


def _data_problems(data: dict) -> list[str]:
    name = data.get("name")
    family = schema.DATA_SOURCES.get(name) if isinstance(name, str) else None
    if family is None:
        return [f"data.name={name!r} is not a known data source; choose one of {', '.join(sorted(schema.DATA_SOURCES))}"]
    return _problems(family, data, prefix="data.")


def _class_section_problems(section: dict, key: str, model: type[BaseModel], own: tuple[str, ...],
                            supplied: tuple[str, ...]) -> list[str]:
    """Typed keys against the schema; every other key must be an argument of the `_target_` class."""
    problems = _problems(model, section, prefix=f"{key}.")
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
    return problems + _nonfinite(extras, key)


def _import_class(path: str):
    try:
        module, name = import_parent(path)
        obj = getattr(module, name, None)
    except ImportError:
        return None
    return obj if inspect.isclass(obj) else None


def _nonfinite(node, key: str) -> list[str]:
    """NaN or infinity anywhere in a section that no typed field covers."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _nonfinite(v, f"{key}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _nonfinite(v, f"{key}[{i}]")]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{key}={node!r} must be a finite number"]
    return []


# ---- model keys: typed by the zoo entry's builder signature ----
_SIMPLE_TYPES = (int, float, bool, str)


def _model_type_problems(model: dict) -> list[str]:
    # the zoo (and torch with it) only once a model section is checked: the pre-Hydra key check needs neither
    from cnnlab.models import MODELS, model_config_problems

    if model_config_problems(model):  # unknown name or keys: validate.py reports those
        return _nonfinite(model, "model")
    typed = _builder_schema(model["name"], MODELS[model["name"]])
    keys = {k: v for k, v in model.items() if k in typed.model_fields}
    untyped = {k: v for k, v in model.items() if k not in typed.model_fields}
    return _problems(typed, keys, prefix="model.") + _nonfinite(untyped, "model")


@lru_cache(maxsize=None)
def _builder_schema(name: str, builder) -> type[BaseModel]:
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
    return create_model(f"model_{name}", __config__=config, **fields)


# ---- before Hydra: overrides of keys that no config file has ----
_FLAGS_WITH_VALUE = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-c", "--cfg",
                     "-p", "--package", "--experimental-rerun")


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
        for key, info in _fields_by_key(model).items():
            keys.add(prefix + key)
            inner = _model_in(info.annotation)
            if inner is not None:  # a section, or a mapping of named sections (search.space.<name>.low)
                named = typing.get_origin(_unwrap(info.annotation)) is dict
                walk(inner, f"{prefix}{key}.*." if named else f"{prefix}{key}.")

    walk(schema.CONFIGS.get(config_name, schema.TrainConfig), "")
    for section, model in [("data", m) for m in set(schema.DATA_SOURCES.values())] + [
            ("optimizer", schema.Optimizer), ("scheduler", schema.Scheduler)]:
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
