"""Checks on the composed config that run before anything is built, so a bad value fails in a second.

Every problem found is reported at once; each message names the key, the bad value and what is accepted.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cnnlab.devices import PRECISIONS
from cnnlab.errors import ConfigError
from cnnlab.losses import LOSSES

PROGRESS = ("auto", "bar", "plain", "none")
MONITOR_MODES = ("auto", "min", "max")


def _get(cfg, key):
    return OmegaConf.select(cfg, key, throw_on_missing=False, default=None)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def validate(cfg: DictConfig) -> None:
    problems: list[str] = []

    def positive_int(key, allow_zero=False):
        value = _get(cfg, key)
        ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
        if not ok:
            problems.append(f"{key}={value!r} must be a {'non-negative' if allow_zero else 'positive'} integer")

    def number_in(key, lo, hi, lo_open=False, hi_open=False, allow_none=False):
        value = _get(cfg, key)
        if value is None and allow_none:
            return
        if not _is_number(value):
            problems.append(f"{key}={value!r} must be a number")
            return
        below = value <= lo if lo_open else value < lo
        above = value >= hi if hi_open else value > hi
        if below or above:
            if hi == float("inf"):
                problems.append(f"{key}={value!r} must be {'>' if lo_open else '>='} {lo}")
            else:
                interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
                problems.append(f"{key}={value!r} must be in {interval}")

    def choice(key, choices):
        value = _get(cfg, key)
        if str(value) not in choices:
            problems.append(f"{key}={value!r} is not accepted; choose one of {', '.join(choices)}")

    # data
    positive_int("data.batch_size")
    positive_int("data.eval_batch_size")
    positive_int("data.num_workers", allow_zero=True)
    from_folders = _get(cfg, "data.name") == "imagefolder"  # an image folder's classes come from its folders
    if not (from_folders and _get(cfg, "data.num_classes") is None):
        positive_int("data.num_classes")
    positive_int("data.in_channels")
    size = _get(cfg, "data.input_size")
    if not (OmegaConf.is_list(size) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        problems.append(f"data.input_size={size!r} must be [height, width] with positive integers")
    for key in ("data.mean", "data.std"):
        value = _get(cfg, key)
        channels = _get(cfg, "data.in_channels")
        if value is not None and (not OmegaConf.is_list(value) or len(value) != channels):
            problems.append(f"{key}={value!r} must list one value per channel (data.in_channels={channels}), "
                            f"or be null to measure it on the training images")
    std = _get(cfg, "data.std")
    if OmegaConf.is_list(std) and any((not _is_number(v)) or v <= 0 for v in std):
        problems.append(f"data.std={list(std)!r} must be positive")
    classes = _get(cfg, "data.classes")
    num_classes = _get(cfg, "data.num_classes")
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        problems.append(f"data.classes has {len(classes)} names but data.num_classes={num_classes}")
    number_in("data.split.val", 0, 1, hi_open=True)
    number_in("data.split.test", 0, 1, hi_open=True, allow_none=True)
    if _get(cfg, "data.download") is not None and not isinstance(_get(cfg, "data.download"), bool):
        problems.append(f"data.download={_get(cfg, 'data.download')!r} must be true or false")
    if from_folders:
        if not (_get(cfg, "data.root") or _get(cfg, "data.train_root")):
            problems.append("data.root=None: set data.root (or data.train_root) to the image folder <root>/<class>/<images>")
        choice("data.resize_mode", ("center_crop", "stretch"))
        if str(_get(cfg, "data.in_memory")).lower() not in ("auto", "true", "false"):
            problems.append(f"data.in_memory={_get(cfg, 'data.in_memory')!r} is not accepted; choose one of auto, true, false")
        number_in("data.memory_limit_mb", 0, float("inf"), lo_open=True)

    # augment
    problems += _augment_problems(cfg)

    # optimizer
    number_in("optimizer.lr", 0, float("inf"), lo_open=True)
    number_in("optimizer.weight_decay", 0, float("inf"), allow_none=True)
    if _get(cfg, "optimizer.momentum") is not None:
        number_in("optimizer.momentum", 0, 1, hi_open=True)
    if _get(cfg, "optimizer.nesterov") and not (_get(cfg, "optimizer.momentum") or 0) > 0:
        problems.append("optimizer.nesterov=true needs optimizer.momentum > 0")

    # model: the name and keys, checked against the zoo entry's builder without building anything
    problems += _model_problems(cfg)

    # reliability
    choice("trainer.nonfinite", ("stop", "skip", "off"))
    if not isinstance(_get(cfg, "trainer.handle_signals"), bool):
        problems.append(f"trainer.handle_signals={_get(cfg, 'trainer.handle_signals')!r} must be true or false")

    # scheduler
    choice("scheduler.interval", ("epoch", "step"))
    positive_int("scheduler.warmup_epochs", allow_zero=True)

    # trainer
    positive_int("trainer.max_epochs")
    if _get(cfg, "trainer.limit_train_batches") is not None:
        positive_int("trainer.limit_train_batches")
    choice("trainer.precision", PRECISIONS)
    choice("trainer.loss", LOSSES)
    choice("trainer.progress", PROGRESS)
    choice("trainer.monitor_mode", MONITOR_MODES)
    choice("trainer.test_with", ("best", "last"))
    if _get(cfg, "trainer.summary") is not None:  # configs saved before the key existed have none
        choice("trainer.summary", ("full", "totals", "none"))
    number_in("trainer.label_smoothing", 0, 1, hi_open=True)
    number_in("trainer.grad_clip", 0, float("inf"), allow_none=True)
    positive_int("trainer.log_every_n_steps", allow_zero=True)
    positive_int("trainer.early_stopping.patience")
    number_in("trainer.early_stopping.min_delta", 0, float("inf"))
    monitor = _get(cfg, "trainer.monitor")
    if not (isinstance(monitor, str) and monitor.startswith("val/")):
        problems.append(f"trainer.monitor={monitor!r} must be a validation metric such as val/loss or val/acc")
    topk = _get(cfg, "trainer.topk")
    if not (OmegaConf.is_list(topk) and len(topk) > 0 and all(isinstance(k, int) and k > 0 for k in topk)):
        problems.append(f"trainer.topk={topk!r} must be a list of positive integers, e.g. [1, 5]")
    if _get(cfg, "trainer.test_with") == "best" and not _get(cfg, "trainer.checkpoint.save_best"):
        problems.append("trainer.test_with=best needs trainer.checkpoint.save_best=true (or set trainer.test_with=last)")

    # finetune
    if _get(cfg, "finetune.unfreeze_after_epochs") is not None:
        positive_int("finetune.unfreeze_after_epochs")
    if _get(cfg, "finetune") is not None:
        number_in("finetune.backbone_lr_scale", 0, float("inf"), lo_open=True)

    # logger
    positive_int("logger.histogram_every_n_epochs", allow_zero=True)

    # run dir
    if _get(cfg, "paths.existing_run") is not None:
        from cnnlab.rundir import EXISTING_CHOICES

        choice("paths.existing_run", EXISTING_CHOICES)

    if problems:
        raise ConfigError(problems)


def _augment_problems(cfg) -> list[str]:
    """Every transform entry must name a class that exists; the batch mix keys must be in range."""
    from cnnlab.data.augment import BATCHED, V2_PREFIX

    problems = []
    transforms = _get(cfg, "augment.transforms")
    transforms = [] if transforms is None else transforms
    if not (OmegaConf.is_list(transforms) or isinstance(transforms, list)):
        return [f"augment.transforms={transforms!r} must be a list of transform entries (each with a _target_)"]
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
    mix = _get(cfg, "augment.mix")
    if mix is not None:
        for key in ("mixup_alpha", "cutmix_alpha"):
            value = mix.get(key, 0.0)
            if not _is_number(value) or value < 0:
                problems.append(f"augment.mix.{key}={value!r} must be a number >= 0 (0 turns it off)")
        for key in ("prob", "switch_prob"):
            value = mix.get(key, 1.0)
            if not _is_number(value) or not 0 <= value <= 1:
                problems.append(f"augment.mix.{key}={value!r} must be in [0, 1]")
    return problems


def _missing_class(target: str) -> str | None:
    import difflib
    import importlib

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
    from cnnlab.models import model_config_problems

    model = _get(cfg, "model")
    return [] if model is None else model_config_problems(model)
