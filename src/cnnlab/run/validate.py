"""Checks on the composed config that run before anything is built, so a bad value fails in a second.

Each key's type, choices and range are declared once, in `cnnlab.config.schema`; this module runs that check and
adds the rules that span several keys (or need an import to answer). Every problem found is reported at
once; each message names the key, the bad value and what is accepted.
"""

from __future__ import annotations

import difflib
import logging
import os

from omegaconf import DictConfig, OmegaConf

from cnnlab.data.augment import BATCHED, V2_PREFIX
from cnnlab.engine.task import validation_metrics
from cnnlab.util.dotted import import_parent
from cnnlab.errors import ConfigError
from cnnlab.models import model_config_problems
from cnnlab.config.checks import config_problems
from cnnlab.config.limits import side_problem
from cnnlab.config.data_schema import ImageFolderData
from cnnlab.config.schema import TrainConfig
from cnnlab.config.typed import typed_config

log = logging.getLogger("cnnlab")


def _get(cfg, key):
    return OmegaConf.select(cfg, key, throw_on_missing=False, default=None)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(cfg: DictConfig, kind: str = "train") -> TrainConfig:
    """Raise one ConfigError listing every problem of `cfg` (a `kind` of config: train, eval or summary); return
    it as its typed sections (cnnlab.config.typed), which the builders take."""
    problems = config_problems(cfg, kind)
    model = _get(cfg, "model")
    if OmegaConf.is_dict(model):
        problems += model_config_problems(model)
    bad_keys = {p.split("=", 1)[0].split(" ", 1)[0] for p in problems}
    cross = _cross_key_problems(cfg)
    if kind in TRAINING_KINDS:
        cross += [p for p in [monitor_problem(cfg)] if p]
    problems += [p for p in cross if p.split("=", 1)[0].split(" ", 1)[0] not in bad_keys]
    if problems:
        raise ConfigError(problems)
    return typed_config(cfg, kind)


# The configs that train (a search trial is a training config): trainer.monitor must name a metric they log.
TRAINING_KINDS = ("train", "tune")


def monitor_problem(cfg) -> str | None:
    """trainer.monitor against the metrics each epoch's validation logs for trainer.topk, as the line naming the
    valid ones (None when it is one, or when either key is the schema's to refuse)."""
    monitor, topk = _get(cfg, "trainer.monitor"), _get(cfg, "trainer.topk")
    if not isinstance(monitor, str) or not monitor.startswith("val/") or not OmegaConf.is_list(topk) \
            or not all(_is_number(k) and isinstance(k, int) and k > 0 for k in topk):
        return None
    choices = validation_metrics(topk)
    if monitor in choices:
        return None
    hint = ""
    if monitor.startswith("val/acc_top"):
        k = monitor[len("val/acc_top"):]
        hint = f" ({monitor} is logged when trainer.topk includes {k})"
    return f"trainer.monitor={monitor!r} is not a logged metric; choose one of {', '.join(choices)}{hint}"


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
    problems += _machine_problems(cfg)
    problems += _range_problems(cfg)
    if _get(cfg, "data.name") == "imagefolder" and not (_get(cfg, "data.root") or _get(cfg, "data.train_root")):
        problems.append("data.root=None: set data.root (or data.train_root) to the image folder <root>/<class>/<images>")
    if _get(cfg, "data.name") == "imagefolder" and _get(cfg, "data.cache") is not False:
        from cnnlab.data.cache import cache_dir_problem

        problem = cache_dir_problem(_get(cfg, "data.cache_dir"), {key: _get(cfg, f"data.{key}") for key in
                                                                   ImageFolderData.PATH_KEYS})
        if problem:
            problems.append(problem)

    problems += _augment_problems(cfg)
    if _get(cfg, "optimizer.nesterov") and not (_number(cfg, "optimizer.momentum") or 0) > 0:
        problems.append("optimizer.nesterov=true needs optimizer.momentum > 0")

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


def max_workers() -> int:
    """The most data.num_workers cnnlab accepts: 4 per CPU this process may use. Loader workers are processes
    that decode images; beyond one per core they only wait on each other, and a few per core still help when
    reads wait on a slow (network) disk. 100,000 processes would bring the machine to a halt before the first
    batch."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 4 * max(1, cpus)


def memory_bytes() -> int | None:
    """This machine's physical memory, None where it cannot be told."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _machine_problems(cfg) -> list[str]:
    """Values the machine cannot hold: loader processes beyond its CPUs, images and batches beyond its memory."""
    problems = []
    workers = _number(cfg, "data.num_workers")
    if isinstance(workers, int) and workers > max_workers():
        problems.append(f"data.num_workers={workers} is more than this machine can run: at most {max_workers()} "
                        f"(4 per CPU core it has); 0 decodes in the main process, a few per core is plenty")
    sizes = {}
    for key in ("data.input_size", "data.image_size"):
        value = _get(cfg, key)
        sides = list(value) if OmegaConf.is_list(value) else [value]
        problem = side_problem(key, sides if OmegaConf.is_list(value) else value, sides)
        if problem:
            problems.append(problem)
        elif all(isinstance(s, int) and s > 0 for s in sides) and sides:
            sizes[key] = sides * (2 // len(sides))
    channels, total = _number(cfg, "data.in_channels"), memory_bytes()
    batch = max((b for b in (_number(cfg, "data.batch_size"), _number(cfg, "data.eval_batch_size"))
                 if isinstance(b, int)), default=None)
    if "data.input_size" in sizes and isinstance(channels, int) and batch and total:
        h, w = sizes["data.input_size"]
        need = batch * channels * h * w * 4  # one batch as float32, before the model's own activations
        if need > total:
            key = "data.batch_size" if batch == _number(cfg, "data.batch_size") else "data.eval_batch_size"
            problems.append(f"{key}={batch} images of {channels} x {h} x {w} (data.input_size) need "
                            f"{need / 2**30:.1f} GiB as one float batch, more than this machine's memory "
                            f"({total / 2**30:.1f} GiB); lower the batch size or data.input_size")
    return problems


# [low, high] pairs whose order the schema cannot see (each bound is checked there on its own).
_ORDERED_PAIRS = (("doctor.lr_range.start_lr", "doctor.lr_range.end_lr",
                   "the learning rate grows from start_lr to end_lr"),
                  ("doctor.gradients.update_ratio_low", "doctor.gradients.update_ratio_high",
                   "a layer's update ratio below low is too small, above high too large"))


def _range_problems(cfg) -> list[str]:
    problems = []
    for low_key, high_key, why in _ORDERED_PAIRS:
        low, high = _number(cfg, low_key), _number(cfg, high_key)
        if low is not None and high is not None and not low < high:
            problems.append(f"{low_key}={low!r} must be below {high_key.rsplit('.', 1)[1]}={high!r} ({why}); "
                            f"swap them")
    std_range = _get(cfg, "doctor.data.std_range")
    if OmegaConf.is_list(std_range) and len(std_range) == 2 and all(_is_number(v) for v in std_range) \
            and not std_range[0] < std_range[1]:
        problems.append(f"doctor.data.std_range={list(std_range)!r} must be [low, high] with low < high, "
                        f"e.g. [0.5, 2.0]")
    return problems


def topk_problem(topk, num_classes: int, where: str = "") -> str | None:
    """trainer.topk names k's above the number of classes (top-11 of 10 classes is always right): the line."""
    ks = sorted({int(k) for k in topk if isinstance(k, int) and not isinstance(k, bool)})
    too_large = [k for k in ks if k > num_classes]
    if not too_large:
        return None
    return (f"trainer.topk={[int(k) for k in topk]!r} asks for top-{too_large[0]} accuracy, but the data has "
            f"{num_classes} classes{where}: every k must be at most {num_classes} (top-{num_classes} is always "
            f"1.0); e.g. trainer.topk=[1{', ' + str(min(5, num_classes)) if num_classes > 1 else ''}]")


def known_classes(cfg) -> int | None:
    """The number of classes trained on as the config alone tells (after data.class_subset), or None (an image
    folder's, until its folders are read)."""
    subset, num_classes = _get(cfg, "data.class_subset"), _get(cfg, "data.num_classes")
    k = len(subset) if OmegaConf.is_list(subset) else num_classes if isinstance(num_classes, int) else None
    return k or None


def fit_topk(cfg, num_classes: int | None, given: bool) -> list[int]:
    """trainer.topk against the number of classes (None: not known yet, nothing to do). A k above it was asked
    for on this command line (`given`): refused. From a config file (the preset's [1, 5] on a 3-class folder):
    dropped with one line, since top-5 of 3 classes is always 1.0 and would only be reported as such.
    Returns trainer.topk as it stands after (cfg's is updated: it is saved with the run)."""
    topk = _get(cfg, "trainer.topk")
    if num_classes is None or not (OmegaConf.is_list(topk) or isinstance(topk, list)):
        return [int(k) for k in topk]
    subset = OmegaConf.is_list(_get(cfg, "data.class_subset"))
    problem = topk_problem(topk, int(num_classes), " (after data.class_subset)" if subset else "")
    if problem is None:
        return [int(k) for k in topk]
    if given:
        raise ConfigError(problem)
    kept = [int(k) for k in topk if int(k) <= int(num_classes)] or [1]
    log.info("trainer.topk=%s: reporting %s only, the data has %d classes (a larger k is always 1.0)",
             [int(k) for k in topk], kept, int(num_classes))
    OmegaConf.update(cfg, "trainer.topk", kept, merge=False)
    return kept


def _per_class_problems(cfg) -> list[str]:
    """Lists with one value per class must match the number of classes trained on (after data.class_subset);
    an image folder whose count comes from its folders is checked once they are read (the same message)."""
    subset, num_classes = _get(cfg, "data.class_subset"), _get(cfg, "data.num_classes")
    k = len(subset) if OmegaConf.is_list(subset) else num_classes if isinstance(num_classes, int) else None
    k = k if k else None  # an empty subset is the schema's to refuse
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
    module_name = target.rpartition(".")[0]
    try:
        module, name = import_parent(target)
    except ImportError:
        return f"module {module_name!r} cannot be imported"
    if hasattr(module, name):
        return None
    known = [n for n in dir(module) if n[:1].isupper()]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"it has: {', '.join(known[:40])}"
    return f"{module_name} has no {name!r}; {hint}"
