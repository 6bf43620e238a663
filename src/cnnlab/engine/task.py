"""What a Trainer is given, in four groups, and what it needs of a training loader.

    Trainer(task, options, context, callbacks, checkpoints)

- `Task`: what is trained and what counts as better: model, optimizer, LR schedule, loss, the monitored metric
  (best epoch, patience) and the fine-tuning freezer. Its state is what a checkpoint carries.
- `TrainerOptions`: how the loop runs, read once from `cfg.trainer` (plain values: the loop never touches the
  config object).
- `RunContext`: where the run happens and what it records: device, precision, run dir, seed and the resolved
  config that every checkpoint carries.
- callbacks: what happens around the loop (TensorBoard, checkpoint files, progress, early stopping), see
  `cnnlab.engine.callbacks`; `checkpoints`, the one among them that keeps the checkpoint files, seen as a
  `cnnlab.engine.callbacks.CheckpointKeeper` (resume points on a stop request, what a failed run leaves).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
import torch.nn as nn

from cnnlab.engine.devices import Precision
from cnnlab.engine.distributed import SINGLE, Dist
from cnnlab.engine.metrics import accuracy_key

if TYPE_CHECKING:  # annotations only: cnnlab-eval imports the engine (evaluate_split) and needs none of them
    from cnnlab.engine.averaging import WeightAverage
    from cnnlab.engine.early_stopping import MonitoredMetric
    from cnnlab.engine.freezing import Freezer
    from cnnlab.config.training_schema import Trainer as TrainerSection
    from cnnlab.engine.optim import LRSchedule


@dataclass
class Task:
    """The model and everything that updates it or judges it.

    monitored: best value and patience of trainer.monitor, shared with the early-stopping callback; it decides
    best.ckpt. freezer: unfreezes on schedule and keeps frozen batch norm in eval mode (fine-tuning).
    average: the averaged weights (trainer.ema / trainer.swa, cnnlab.engine.averaging) that validation, the
    test and checkpoints' "model" use once it holds an average.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    monitored: MonitoredMetric
    freezer: Freezer | None = None
    average: WeightAverage | None = None


def reported_topk(topk) -> tuple[int, ...]:
    """The top-k accuracies a run (and cnnlab-eval) reports for trainer.topk: top-1 always, each k once, ascending."""
    return tuple(sorted({1, *(int(k) for k in topk)}))


def validation_metrics(topk) -> list[str]:
    """The metrics every epoch's validation logs for trainer.topk, sorted: the names trainer.monitor may take
    (val/loss, val/acc, val/acc_top<k>; with trainer.ema or trainer.swa the average is validated under them)."""
    return sorted(["val/loss", *(accuracy_key("val", k) for k in reported_topk(topk))])


@dataclass(frozen=True)
class TrainerOptions:
    """The `trainer.*` settings the loop itself reads (configs/trainer/default.yaml documents each)."""

    max_epochs: int
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None   # evaluation passes of the loop cut to their first N batches
    limit_test_batches: int | None = None
    topk: tuple[int, ...] = (1,)       # always includes 1
    channels_last: bool = False       # resolved (cnnlab.engine.devices.resolve_channels_last): inputs go in as NHWC
    compile: bool = False
    grad_clip: float = 0.0
    accumulate_grad_batches: int = 1  # batches per optimizer step
    nonfinite: str = "stop"           # stop | skip | off
    handle_signals: bool = True
    test_with: str = "best"           # best | last
    precision: str = "32"             # how it runs ("32", "bf16", "fp16": trainer.precision=auto resolved), for messages
    bn_recalibrate: int = 0           # batch-norm statistics recomputed over N training batches before validation

    @classmethod
    def from_config(cls, trainer: TrainerSection, channels_last: bool | None = None,
                    precision: str | None = None) -> TrainerOptions:
        """From the validated `trainer` section; `channels_last` and `precision`: what trainer.channels_last and
        trainer.precision resolved to (cnnlab.engine.devices), where they may be auto."""
        return cls(
            max_epochs=trainer.max_epochs,
            limit_train_batches=trainer.limit_train_batches,
            limit_val_batches=trainer.limit_val_batches,
            limit_test_batches=trainer.limit_test_batches,
            topk=reported_topk(trainer.topk),
            channels_last=trainer.channels_last is True if channels_last is None else channels_last,
            compile=trainer.compile,
            grad_clip=float(trainer.grad_clip),
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            nonfinite=trainer.nonfinite,
            handle_signals=trainer.handle_signals,
            test_with=trainer.test_with,
            precision=trainer.precision if precision is None else precision,
            bn_recalibrate=trainer.bn_recalibrate,
        )


@dataclass
class RunContext:
    """Where one run happens and what identifies it.

    config: the resolved config (a plain dict), saved with its hash in every checkpoint.
    dist: world size and rank; a single process is `cnnlab.engine.distributed.SINGLE`.
    """

    device: torch.device
    precision: Precision
    run_dir: Path
    seed: int
    config: dict
    dist: Dist = SINGLE  # this process's place under distributed training (cnnlab.engine.distributed)


@runtime_checkable
class TrainLoader(Protocol):
    """What the training loop needs of its loader of training batches.

    Implemented by cnnlab.data.loaders.TensorLoader and DataLoaderAdapter. Batches are (inputs, targets) on
    the device, normalised. An epoch's batches depend only on (seed, epoch), so an interrupted epoch can be
    continued exactly: `state_dict()` says where the current epoch stands, and `resume(state, on_resumed)`
    makes the next iteration continue from there.
    """

    batch_size: int
    skipped: int  # unreadable image files dropped so far (data.skip_unreadable=true), 0 where none can be

    def set_epoch(self, epoch: int) -> None:
        """The next iteration yields this epoch's batches (order, augmentation), from the first."""

    def state_dict(self) -> dict:
        """Position in the current epoch: its number, batches done and the random streams after them."""

    def resume(self, state: dict, on_resumed: Callable[[], None] | None = None) -> None:
        """The next iteration continues the epoch `state` describes; `on_resumed()` runs once positioned, before
        the first new batch is drawn."""

    def __len__(self) -> int:
        """Batches in a full epoch."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    @property
    def dataset_size(self) -> int:
        """Samples in the split."""
