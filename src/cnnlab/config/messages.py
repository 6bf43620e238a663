"""Turning pydantic's validation errors into cnnlab's lines: one per key, naming the key, the bad value and what
is accepted (a field's description, its choices or its type), with the closest key for a mistyped one."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import math
import signal
import threading
import types
import typing

from pydantic import BaseModel, ValidationError


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


def schema_problems(model: type[BaseModel], data: dict, prefix: str = "") -> list[str]:
    """What `model` refuses in `data` (a plain dict), one line per key, each key named after `prefix`."""
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
        fields = fields_by_key(current)
        parent = current
        if part not in fields:  # a key the section does not have
            field = None
            break
        field = fields[part]
        current = model_in(field.annotation)
        named = current is not None and typing.get_origin(unwrap(field.annotation)) is dict
    return path, field, parent


def fields_by_key(model) -> dict:
    return {(info.alias or name): info for name, info in model.model_fields.items()}


def _field_names(model) -> list[str]:
    return list(fields_by_key(model)) if model is not None else []


def unwrap(annotation):
    """Optional[X] / Annotated[X, ...] -> X."""
    while typing.get_origin(annotation) in (typing.Annotated, typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0]
    return annotation


def model_in(annotation):
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
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



def nonfinite(node, key: str) -> list[str]:
    """NaN or infinity anywhere in a section that no typed field covers."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in nonfinite(v, f"{key}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in nonfinite(v, f"{key}[{i}]")]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{key}={node!r} must be a finite number"]
    return []

