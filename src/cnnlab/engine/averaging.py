"""Averaged weights: an exponential moving average of the weights (EMA, trainer.ema) or stochastic weight
averaging (SWA, trainer.swa), each kept in a `torch.optim.swa_utils.AveragedModel` of the task's model.

The Trainer drives an average at three moments: `after_step` (every optimizer step: EMA), `before_epoch`
(SWA's phase and learning rate begin) and `after_epoch` (SWA: average the epoch-end weights, then recompute
the batch-norm statistics over the epoch's training batches, cnnlab.engine.batchnorm). Once an average holds
weights (`active`), it is what validation measures, what the final test uses and what a checkpoint's "model"
holds; the raw training weights travel under "raw_model" for resume only (cnnlab.engine.checkpoint.RAW_WEIGHTS).
The EMA's warm-up and what SWA averages when: docs/training.md, "Averaged weights".
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn

from cnnlab.engine.batchnorm import batch_norms, recompute_batchnorm, trained_norms
from cnnlab.engine.distributed import SINGLE, Dist

if TYPE_CHECKING:  # annotations only
    from cnnlab.config.training_schema import Trainer as TrainerSection

log = logging.getLogger("cnnlab")


class WeightAverage:
    """An AveragedModel of the task's model and the moments at which the trainer updates it."""

    kind = ""  # "ema" | "swa"

    def __init__(self, averaged: AveragedModel):
        self.averaged = averaged
        averaged.requires_grad_(False)  # updated in place under no_grad; evaluated under inference_mode

    @property
    def module(self) -> nn.Module:
        """The averaged copy of the model (same layers and state_dict keys as the model)."""
        return self.averaged.module

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged.item())

    @property
    def active(self) -> bool:
        """The average holds weights to validate and test (EMA: always; SWA: once it averaged an epoch)."""
        return True

    def after_step(self, model: nn.Module, step: int) -> None:
        """After optimizer step `step` (1-based, counted over the run)."""

    def before_epoch(self, epoch: int) -> None:
        """Epoch `epoch` is about to train."""

    def after_epoch(self, model: nn.Module, epoch: int, batches: Callable[[], Iterable[torch.Tensor]],
                    dist: Dist = SINGLE) -> None:
        """Epoch `epoch` has trained; `batches()` yields its training inputs again (for batch-norm statistics)."""

    def state_dict(self) -> dict:
        """What continues the average besides its weights (which a checkpoint holds as "model")."""
        return {"kind": self.kind, "n_averaged": self.n_averaged}

    def load_state_dict(self, state: dict | None, weights: dict | None) -> None:
        """Continue from a checkpoint's `state` (its "average") and averaged `weights` (its "model", when the
        checkpoint also holds the raw weights). Another kind of average, or none, starts this one afresh from
        the weights training continues with."""
        if not state or state.get("kind") != self.kind:
            if state:
                log.info("the checkpoint holds a %s average; starting the %s average afresh", state.get("kind"),
                         self.kind.upper())
            return
        if weights is not None and int(state["n_averaged"]) > 0:
            self.module.load_state_dict(weights)
            self.averaged.n_averaged.fill_(int(state["n_averaged"]))

    def describe(self) -> str:
        return self.kind.upper()


class EMA(WeightAverage):
    """Exponential moving average of parameters and buffers, updated every `every_n_steps` optimizer steps."""

    kind = "ema"

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True, every_n_steps: int = 1):
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.every_n_steps = int(every_n_steps)
        self._decay_now = self.decay
        super().__init__(AveragedModel(model, multi_avg_fn=self._update, use_buffers=True))

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step `step`: min(decay, (1 + t) / (10 + t)) with warm-up."""
        return min(self.decay, (1.0 + step) / (10.0 + step)) if self.warmup else self.decay

    def after_step(self, model: nn.Module, step: int) -> None:
        if step % self.every_n_steps:
            return
        self._decay_now = self.decay_at(step)
        self.averaged.update_parameters(model)

    @torch.no_grad()
    def _update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        # AveragedModel groups the tensors by device and dtype, so each call sees one dtype
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            get_ema_multi_avg_fn(self._decay_now)(averaged, current, n_averaged)  # one foreach lerp
        else:  # integer buffers (batch norm's num_batches_tracked) are counters: copied, as timm does
            for a, c in zip(averaged, current):
                a.copy_(c)

    def describe(self) -> str:
        return (f"EMA (decay {self.decay:g}{', warm-up (1 + t) / (10 + t)' if self.warmup else ''}"
                f"{f', every {self.every_n_steps} steps' if self.every_n_steps > 1 else ''})")


class SWA(WeightAverage):
    """Stochastic weight averaging of the epoch-end weights from `start_epoch` on, with SWALR's learning rate.

    lr: the rate SWALR anneals to, or None to hold the rate the schedule reached when SWA starts.
    """

    kind = "swa"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, start_epoch: int, lr: float | None,
                 anneal_epochs: int, anneal_strategy: str = "cos", limit_batches: int | None = None):
        self.optimizer = optimizer
        self.start_epoch = int(start_epoch)
        self.lr = lr
        self.anneal_epochs = int(anneal_epochs)
        self.anneal_strategy = anneal_strategy
        self.limit_batches = limit_batches
        self.swalr: SWALR | None = None  # built when the SWA phase begins
        # use_buffers=False: the parameters' equal-weight running mean (torch's default SWA average); buffers
        # are copied from the model and the batch-norm statistics then recomputed for the averaged weights
        super().__init__(AveragedModel(model, use_buffers=False))

    @property
    def active(self) -> bool:
        return self.n_averaged > 0

    @property
    def in_phase(self) -> bool:
        """SWALR sets the learning rate (the configured schedule no longer steps)."""
        return self.swalr is not None

    def _scheduler(self, swa_lrs: list[float] | None = None) -> SWALR:
        lrs = swa_lrs or ([float(self.lr)] * len(self.optimizer.param_groups) if self.lr is not None
                          else [float(g["lr"]) for g in self.optimizer.param_groups])
        return SWALR(self.optimizer, lrs, anneal_epochs=self.anneal_epochs, anneal_strategy=self.anneal_strategy)

    def before_epoch(self, epoch: int) -> None:
        if epoch >= self.start_epoch and self.swalr is None:
            self.swalr = self._scheduler()
            log.info("epoch %d: stochastic weight averaging starts; learning rate %s -> %s over %d epoch(s)", epoch,
                     f"{self.optimizer.param_groups[0]['lr']:.3g}",
                     f"{self.optimizer.param_groups[0]['swa_lr']:.3g}", self.anneal_epochs)

    def after_epoch(self, model: nn.Module, epoch: int, batches: Callable[[], Iterable[torch.Tensor]],
                    dist: Dist = SINGLE) -> None:
        if epoch < self.start_epoch:
            return
        self.averaged.update_parameters(model)
        self.update_bn(batches, dist, trained_norms(model))

    def update_bn(self, batches: Callable[[], Iterable[torch.Tensor]], dist: Dist = SINGLE,
                  names: set[str] | None = None) -> None:
        """Batch-norm running statistics of the averaged weights: one pass over the training batches (the
        average of batch statistics, as torch's update_bn computes them) by cnnlab.engine.batchnorm, which runs
        the network as evaluation does and, under DDP, averages the statistics over the processes' shards.
        `names`: the layers training updates (None: all). A model without batch norm takes no pass."""
        if not batch_norms(self.module):
            return
        recompute_batchnorm(self.module, itertools.islice(batches(), self.limit_batches), dist, names)

    def step_epoch(self) -> None:
        """At an epoch end within the SWA phase: SWALR's next rate."""
        self.swalr.step()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["swalr"] = self.swalr.state_dict() if self.swalr is not None else None
        state["swa_lrs"] = [float(g["swa_lr"]) for g in self.optimizer.param_groups] if self.swalr else None
        return state

    def load_state_dict(self, state: dict | None, weights: dict | None) -> None:
        super().load_state_dict(state, weights)
        if state and state.get("kind") == self.kind and state.get("swalr") is not None:
            self.swalr = self._scheduler(state.get("swa_lrs"))  # at its first step: the rate is left as restored
            self.swalr.load_state_dict(state["swalr"])

    def describe(self) -> str:
        return f"SWA (from epoch {self.start_epoch})"


class SWASchedule:
    """The run's learning-rate schedule until the SWA phase, then SWALR (stepped per epoch): the trainer steps
    this object as it steps any LRSchedule."""

    def __init__(self, schedule, swa: SWA):
        self.schedule = schedule
        self.swa = swa

    def step_batch(self) -> None:
        if not self.swa.in_phase:
            self.schedule.step_batch()

    def step_epoch(self, metric: float | None = None) -> None:
        if self.swa.in_phase:
            self.swa.step_epoch()
        else:
            self.schedule.step_epoch(metric)

    def lr(self) -> float:
        return self.schedule.lr()

    def state_dict(self) -> dict:
        return self.schedule.state_dict()  # SWALR's state is the average's (SWA.state_dict)

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state)

    def __getattr__(self, name: str):
        return getattr(self.schedule, name)  # scheduler, interval, ... of the configured schedule


def build_average(trainer: TrainerSection, model: nn.Module, optimizer: torch.optim.Optimizer) -> WeightAverage | None:
    """The average trainer.ema / trainer.swa ask for (the schema and validate refuse both at once), or None.

    `trainer`: the validated trainer section. `model`: on its device and in its memory layout, with the weights
    training starts (or continues) from."""
    ema, swa = trainer.ema, trainer.swa
    if ema.enabled:
        return EMA(model, ema.decay, ema.warmup, ema.every_n_steps)
    if swa.enabled:
        return SWA(model, optimizer, swa.start_epoch, swa.lr, swa.anneal_epochs, swa.anneal_strategy,
                   trainer.limit_train_batches)
    return None
