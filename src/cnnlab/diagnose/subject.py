"""What the doctor examines: the model, data, loss and optimizer settings exactly as cnnlab-train builds them.

Checks never touch the run's own model: each takes `fresh()`, a deep copy with a new optimizer of the configured
kind (its configured rate, held constant: the run's schedule would start a one-cycle run 25x lower), so one check
cannot leave its traces in the next.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from cnnlab.config.data_schema import DataBase
from cnnlab.config.schema import Doctor
from cnnlab.data import build_data
from cnnlab.data.loaders import TensorLoader
from cnnlab.engine.devices import FULL, Precision
from cnnlab.engine.stepping import split_outputs
from cnnlab.engine.losses import Loss
from cnnlab.engine.optim import build_optimizer


@dataclass
class Subject:
    model: nn.Module        # as built for training, never trained: checks work on copies
    loss: Loss
    info: object            # DataInfo: num_classes, classes, mean, std, ...
    train: object           # the training loader, augmented as in training
    plain: object           # the same training images without augmentation or MixUp/CutMix
    val: object
    test: object
    device: torch.device
    optimizer_cfg: DictConfig
    settings: Doctor        # the doctor section
    seed: int = 0           # every check starts from the global RNG seeded with it: same report every time
    head: tuple = ()        # finetune: the classifier head's module names, for backbone_lr_scale
    backbone_lr_scale: float = 1.0
    warmup: bool = True     # the run's schedule warms up to optimizer.lr (one-cycle, warmup_epochs > 0)
    precision: Precision = FULL  # the run's (trainer.precision, auto resolved): every forward pass runs in it

    @classmethod
    def from_run(cls, run) -> "Subject":
        """The Subject of a run built by cnnlab.run.lifecycle.prepare(..., kind="doctor")."""
        sections, task = run.sections, run.trainer.task
        scale = sections.finetune.backbone_lr_scale if sections.finetune is not None else 1.0
        return cls(model=task.model, loss=task.loss, info=run.data.info, train=run.data.train,
                   plain=plain_loader(run.data, sections.data, sections.seed, run.trainer.device), val=run.data.val,
                   test=run.data.test, device=run.trainer.device, optimizer_cfg=run.cfg.optimizer,
                   settings=sections.doctor, seed=sections.seed,
                   head=tuple(task.freezer.heads) if task.freezer else (), backbone_lr_scale=scale,
                   warmup=warms_up(run.cfg.scheduler), precision=run.trainer.context.precision)

    @property
    def lr(self) -> float:
        return float(self.optimizer_cfg.lr)

    def fresh(self, weight_decay: float | None = None) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A copy of the model at initialisation and a new optimizer for it (weight_decay replaced if given)."""
        model = copy.deepcopy(self.model)
        options = OmegaConf.create(OmegaConf.to_container(self.optimizer_cfg, resolve=True))
        if weight_decay is not None and "weight_decay" in options:
            options.weight_decay = weight_decay
        return model, build_optimizer(options, model, head=self.head, backbone_lr_scale=self.backbone_lr_scale)

    def batches(self, n: int, loader=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first n batches of `loader` (default: the un-augmented training images), on the device."""
        out = []
        for x, y in (self.plain if loader is None else loader):
            out.append((x.to(self.device), y.to(self.device)))
            if len(out) == n:
                break
        return out

    def autocast(self):
        """The context of a forward pass at the run's precision (a no-op in fp32)."""
        return self.precision.autocast(self.device.type)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler where the run has one (fp16)."""
        return torch.amp.GradScaler(self.device.type) if self.precision.use_scaler else None

    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The main head's logits (auxiliary heads of GoogLeNet/Inception are left out), computed at the run's
        precision as training computes them."""
        with self.autocast():
            return split_outputs(model(x))[0]


def plain_loader(data, section: DataBase, seed: int, device):
    """The training split without augmentation, shuffled once by the seed (the first batches mix the classes).

    The resident path shares the images (no copy); the DataLoader path builds the split again without transforms.
    """
    train = data.train
    if isinstance(train, TensorLoader):
        return TensorLoader(train.images, train.labels, train.batch_size, index=train.index, mean=data.info.mean,
                            std=data.info.std,
                            shuffle=True, seed=train.seed, device=train.device)
    return build_data(section, seed, device, train_augment=False).train


def warms_up(scheduler) -> bool:
    """Whether a scheduler config reaches optimizer.lr after a warm-up (one-cycle's rising phase, or cnnlab's
    warmup_epochs) rather than starting there: the range test's band of good rates depends on it."""
    target = str(scheduler.get("_target_") or "")
    return target.endswith("OneCycleLR") or int(scheduler.get("warmup_epochs") or 0) > 0
