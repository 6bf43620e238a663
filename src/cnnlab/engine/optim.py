"""Optimizers and learning-rate schedules from configs, built with hydra.utils.instantiate on torch classes."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from cnnlab.config.compose import instantiate_resolved
from cnnlab.errors import ConfigError

log = logging.getLogger("cnnlab")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _partition(named_params, predicate):
    """(those for which predicate(name, param) holds, the rest), both as (name, param) lists."""
    yes, no = [], []
    for name, param in named_params:
        (yes if predicate(name, param) else no).append((name, param))
    return yes, no


def _decay_split(named_params, weight_decay: float, decay_norm_and_bias: bool, norm_params: set) -> list[dict]:
    if decay_norm_and_bias or not weight_decay:
        return [{"params": [p for _, p in named_params]}]
    exempt, decay = _partition(named_params, lambda n, p: n.endswith("bias") or id(p) in norm_params or p.ndim <= 1)
    return [{"params": [p for _, p in decay]}, {"params": [p for _, p in exempt], "weight_decay": 0.0}]


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                     head: tuple[str, ...] = (), backbone_lr_scale: float = 1.0, lr: float | None = None) -> list[dict]:
    """All parameters (frozen ones too, so unfreezing later needs no new optimizer), split so that biases and
    norm-layer weights can skip weight decay, and the backbone can train at a fraction of the head's rate."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    named = list(model.named_parameters())
    if backbone_lr_scale == 1.0 or not head:
        groups = _decay_split(named, weight_decay, decay_norm_and_bias, norm_params)
    else:
        in_head, backbone = _partition(named, lambda n, p: any(n.startswith(h + ".") for h in head))
        groups = _decay_split(in_head, weight_decay, decay_norm_and_bias, norm_params)
        for group in _decay_split(backbone, weight_decay, decay_norm_and_bias, norm_params):
            group["lr"] = lr * backbone_lr_scale
            groups.append(group)
    return [g for g in groups if g["params"]]


def build_optimizer(cfg, model: nn.Module, head: tuple[str, ...] = (), backbone_lr_scale: float = 1.0):
    options = OmegaConf.to_container(cfg, resolve=True)
    # false, as in every optimizer YAML: biases and norm-layer weights are not decayed unless the config says so
    decay_norm_and_bias = bool(options.pop("decay_norm_and_bias", False))
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the model has no trainable parameters (is everything frozen?)")
    if not backbone_lr_scale > 0:
        raise ConfigError(f"finetune.backbone_lr_scale={backbone_lr_scale} must be > 0 (freeze the backbone instead)")
    groups = parameter_groups(model, float(options.get("weight_decay", 0.0) or 0.0), decay_norm_and_bias,
                              head=head, backbone_lr_scale=backbone_lr_scale, lr=options.get("lr"))
    factory = instantiate_resolved(options, "optimizer")
    try:
        return factory(groups)
    except (ValueError, TypeError) as bad:
        raise ConfigError(f"optimizer {options.get('_target_')}: {bad}") from None


def _fit_one_cycle_to_a_short_run(options: dict) -> None:
    """OneCycleLR divides by the length of its rising phase (pct_start x total_steps - 1 steps), so a run of a
    few steps (trainer.max_epochs=2 trainer.limit_train_batches=2) would end in ZeroDivisionError. Such a run
    peaks after its first step instead; a one-step run takes its one step at the starting rate."""
    steps = int(options["total_steps"])
    pct = float(options.get("pct_start", 0.3))
    if steps * pct > 1:
        return
    total = max(steps, 2)  # stepping stops at the run's end, so a longer plan than a one-step run is harmless
    # peak at step 1 when a falling phase of at least one step remains; else halfway between steps 0 and 1
    options["total_steps"], options["pct_start"] = total, (2.0 if total >= 3 else 1.5) / total
    log.info("scheduler=onecycle: %d step(s) are too few for pct_start=%s; the rate peaks after the first step "
             "instead", steps, pct)


class LRSchedule:
    """A torch scheduler plus an optional linear warm-up, stepped per batch or per epoch.

    Warm-up scales every group's lr from warmup_start_factor to 1 over the first warmup_epochs (per batch,
    for smoothness); afterwards the wrapped torch scheduler takes over, counting from the end of warm-up.
    ReduceLROnPlateau is stepped with the monitored metric at each epoch end.
    """

    def __init__(self, optimizer, scheduler, interval: str, warmup_steps: int, warmup_start_factor: float):
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.interval = interval
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self.is_plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if warmup_steps:
            self._set_warmup_lr()

    def _set_warmup_lr(self) -> None:
        frac = self.step_count / self.warmup_steps
        factor = self.warmup_start_factor + (1.0 - self.warmup_start_factor) * frac
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def step_batch(self) -> None:
        self.step_count += 1
        if self.warmup_steps and self.step_count <= self.warmup_steps:
            if self.step_count == self.warmup_steps:  # hand over at exactly the base rate
                for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                    group["lr"] = base
            else:
                self._set_warmup_lr()
            return
        if self.scheduler is not None and self.interval == "step" and not self.is_plateau:
            self.scheduler.step()

    def step_epoch(self, metric: float | None = None) -> None:
        # The epoch that completes warm-up is not a main-schedule epoch yet.
        if self.scheduler is None or (self.warmup_steps and self.step_count <= self.warmup_steps):
            return
        if self.is_plateau:
            if metric is not None and math.isfinite(metric):
                self.scheduler.step(metric)
        elif self.interval == "epoch":
            self.scheduler.step()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "base_lrs": self.base_lrs,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.base_lrs = list(state["base_lrs"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def build_schedule(cfg, optimizer, *, max_epochs: int, steps_per_epoch: int, monitor_mode: str) -> LRSchedule:
    options = OmegaConf.to_container(cfg, resolve=True)
    interval = options.pop("interval", "epoch")
    warmup_epochs = int(options.pop("warmup_epochs", 0) or 0)
    start_factor = float(options.pop("warmup_start_factor", 0.1))
    # interval, warm-up epochs (< max_epochs) and start factor were checked with the config (cnnlab.config.schema)
    target = options.get("_target_")
    scheduler = None
    if target:
        short = target.rsplit(".", 1)[-1]
        main_epochs = max_epochs - warmup_epochs
        length = main_epochs * steps_per_epoch if interval == "step" else main_epochs
        # Fill in the lengths that depend on the run, so configs need not repeat max_epochs.
        if short == "OneCycleLR":
            if options.get("max_lr") is None:
                options["max_lr"] = [g["lr"] for g in optimizer.param_groups]
            if options.get("total_steps") is None:
                options["total_steps"] = max(1, main_epochs * steps_per_epoch)
            _fit_one_cycle_to_a_short_run(options)
            if options.get("cycle_momentum") is None:
                defaults = optimizer.defaults
                options["cycle_momentum"] = "betas" in defaults or bool(defaults.get("momentum"))
            interval = "step"
        elif short == "CosineAnnealingLR" and options.get("T_max") is None:
            options["T_max"] = max(1, length)
        elif short == "ReduceLROnPlateau" and options.get("mode") is None:
            options["mode"] = monitor_mode
        try:
            scheduler = instantiate_resolved(options, "scheduler", optimizer=optimizer)
        except Exception as bad:
            raise ConfigError(f"scheduler {target}: {bad}") from None
    return LRSchedule(optimizer, scheduler, interval, warmup_epochs * steps_per_epoch, start_factor)
