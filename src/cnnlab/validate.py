"""Checks on the composed config that run before anything is built, so a bad value fails in a second.

Each key's type, choices and range are declared once, in `cnnlab.schema`; this module runs that check and
adds the rules that span several keys (or need an import to answer). Every problem found is reported at
once; each message names the key, the bad value and what is accepted.
"""

from __future__ import annotations

import difflib
import importlib

from omegaconf import DictConfig, OmegaConf

from cnnlab.data.augment import BATCHED, V2_PREFIX
from cnnlab.errors import ConfigError
from cnnlab.models import model_config_problems
from cnnlab.schema_check import config_problems


def _get(cfg, key):
    return OmegaConf.select(cfg, key, throw_on_missing=False, default=None)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(cfg: DictConfig, kind: str = "train") -> None:
    """Raise one ConfigError listing every problem of `cfg` (a `kind` of config: train, eval or summary)."""
    problems = config_problems(cfg, kind)
    bad_keys = {p.split("=", 1)[0].split(" ", 1)[0] for p in problems}
    problems += [p for p in _cross_key_problems(cfg) if p.split("=", 1)[0].split(" ", 1)[0] not in bad_keys]
    if problems:
        raise ConfigError(problems)


def _cross_key_problems(cfg) -> list[str]:
    """Rules between keys; each applies only when its keys have the right types (the schema says otherwise)."""
    problems: list[str] = []
    channels = _get(cfg, "data.in_channels")
    for key in ("data.mean", "data.std"):
        value = _get(cfg, key)
        if OmegaConf.is_list(value) and isinstance(channels, int) and len(value) != channels:
            problems.append(f"{key}={list(value)!r} must list one value per channel (data.in_channels={channels}), "
                            f"or be null to measure it on the training images")
    classes = _get(cfg, "data.classes")
    num_classes = _get(cfg, "data.num_classes")
    if OmegaConf.is_list(classes) and isinstance(num_classes, int) and len(classes) != num_classes:
        problems.append(f"data.classes has {len(classes)} names but data.num_classes={num_classes}")
    problems += _per_class_problems(cfg)
    if _get(cfg, "data.name") == "imagefolder" and not (_get(cfg, "data.root") or _get(cfg, "data.train_root")):
        problems.append("data.root=None: set data.root (or data.train_root) to the image folder <root>/<class>/<images>")

    problems += _augment_problems(cfg)
    if _get(cfg, "optimizer.nesterov") and not (_number(cfg, "optimizer.momentum") or 0) > 0:
        problems.append("optimizer.nesterov=true needs optimizer.momentum > 0")
    problems += _model_problems(cfg)

    warmup, epochs = _number(cfg, "scheduler.warmup_epochs"), _number(cfg, "trainer.max_epochs")
    if isinstance(warmup, int) and isinstance(epochs, int) and warmup > 0 and warmup >= epochs:
        problems.append(f"scheduler.warmup_epochs={warmup} must be in [0, trainer.max_epochs={epochs})")
    if _get(cfg, "trainer.test_with") == "best" and _get(cfg, "trainer.checkpoint.save_best") is False:
        problems.append("trainer.test_with=best needs trainer.checkpoint.save_best=true (or set trainer.test_with=last)")
    problems += _averaging_problems(cfg, epochs)
    return problems


def _averaging_problems(cfg, epochs) -> list[str]:
    """trainer.ema and trainer.swa each keep one average of the weights: not both; SWA must start in the run."""
    if _get(cfg, "trainer.ema.enabled") is True and _get(cfg, "trainer.swa.enabled") is True:
        return ["trainer.ema.enabled=true and trainer.swa.enabled=true cannot be combined: each keeps the one "
                "average of the weights that validation, the test and checkpoints use; enable one of them"]
    start = _number(cfg, "trainer.swa.start_epoch")
    if _get(cfg, "trainer.swa.enabled") is True and isinstance(start, int) and isinstance(epochs, int) \
            and start > epochs:
        return [f"trainer.swa.start_epoch={start} must be at most trainer.max_epochs={epochs}: SWA averages the "
                f"weights at the end of epochs start_epoch..max_epochs"]
    return []


def _number(cfg, key):
    value = _get(cfg, key)
    return value if _is_number(value) else None


def _per_class_problems(cfg) -> list[str]:
    """Lists with one value per class must match the number of classes trained on (after data.class_subset);
    an image folder whose count comes from its folders is checked once they are read (the same message)."""
    subset, num_classes = _get(cfg, "data.class_subset"), _get(cfg, "data.num_classes")
    k = len(subset) if OmegaConf.is_list(subset) else num_classes if isinstance(num_classes, int) else None
    problems = []
    for key, what in (("trainer.class_weights", "weight"), ("data.max_per_class", "number")):
        value = _get(cfg, key)
        if k is not None and OmegaConf.is_list(value) and len(value) != k:
            problems.append(f"{key} has {len(value)} values but the data has num_classes={k}"
                            f"{' (after data.class_subset)' if OmegaConf.is_list(subset) else ''}: give one {what} "
                            f"per class")
    return problems


def _augment_problems(cfg) -> list[str]:
    """Every transform entry must name a class that exists (found by importing its module)."""
    problems = []
    transforms = _get(cfg, "augment.transforms")
    transforms = [] if transforms is None else transforms
    if not (OmegaConf.is_list(transforms) or isinstance(transforms, list)):
        return []  # the schema names it
    for i, entry in enumerate(transforms):
        target = entry.get("_target_") if OmegaConf.is_dict(entry) else None
        if not isinstance(target, str) or not target:
            problems.append(f"augment.transforms[{i}]={entry!r} needs a _target_ naming a transform class, "
                            f"e.g. {V2_PREFIX}RandomHorizontalFlip")
            continue
        if target.startswith(V2_PREFIX) and target[len(V2_PREFIX):] in BATCHED:
            continue  # known without importing torchvision (keeps the default run's start-up light)
        problem = _missing_class(target)
        if problem:
            problems.append(f"augment.transforms[{i}]._target_={target!r}: {problem}")
    return problems


def _missing_class(target: str) -> str | None:
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return f"module {module_name!r} cannot be imported"
    if hasattr(module, name):
        return None
    known = [n for n in dir(module) if n[:1].isupper()]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"it has: {', '.join(known[:40])}"
    return f"{module_name} has no {name!r}; {hint}"


def _model_problems(cfg) -> list[str]:
    model = _get(cfg, "model")
    return [] if model is None else model_config_problems(model)
