"""Batch-norm running statistics recomputed for the weights as they are: trainer.bn_recalibrate before every
validation, and SWA's statistics of its averaged weights (cnnlab.engine.averaging).

During training a batch-norm layer's running mean and variance follow the batch statistics with momentum 0.1,
so they describe the weights of the last ~10-20 steps, weighted towards older ones. When the weights move fast
(a short run, a high learning rate, Adam early on) that lag is large, and in eval mode each layer normalises
with statistics of older weights; the error compounds with depth. Recomputing the statistics with the current
weights over some training batches removes the lag (torch.optim.swa_utils.update_bn does it for SWA).

How the pass runs, and why (docs/training.md, "Batch-norm recalibration"):
- the network runs as evaluation runs it (model.eval()), with only the batch-norm layers being recomputed in
  train mode: dropout is off, as at evaluation. In train mode dropout scales the kept activations by 1/(1-p),
  which keeps their mean but inflates their variance, so a batch norm after a dropout would learn a variance
  evaluation never sees; and branches that run only in training (GoogLeNet's auxiliary classifiers) are
  skipped instead of paid for. A layer the pass does not reach keeps its statistics.
- the statistics are the plain average of the batch statistics (momentum None, after resetting them), as
  update_bn computes them; the layers' momentum and batch counter are restored afterwards, so training
  continues exactly as without the pass.
- only the batch-norm layers that training updates: `trained_norms` of the model in its training mode (a
  layer fine-tuning keeps frozen, in eval mode, keeps its pretrained statistics).
- under DDP each process passes over its own shard and the statistics are then averaged over the processes:
  the training shards hold equally many batches, so that is the average over all of them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

from cnnlab.engine.distributed import SINGLE, Dist

_BatchNorm = nn.modules.batchnorm._BatchNorm  # BatchNorm1d/2d/3d, SyncBatchNorm, the lazy ones


def batch_norms(module: nn.Module) -> dict[str, nn.Module]:
    """The module's batch-norm layers that keep running statistics, by name."""
    return {name: m for name, m in module.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None}


def trained_norms(model: nn.Module) -> set[str]:
    """The names of the batch-norm layers that training updates: those in train mode in `model` as it trains
    (after model.train() and the freezer's modes)."""
    return {name for name, m in batch_norms(model).items() if m.training}


@torch.no_grad()
def recompute_batchnorm(module: nn.Module, inputs: Iterable[torch.Tensor], dist: Dist = SINGLE,
                        names: set[str] | None = None) -> tuple[int, int, int]:
    """Reset and recompute the running statistics of `module`'s batch-norm layers (`names`, or all) over the
    batches `inputs` yields, as described above; under DDP averaged over the processes. The module's modes are
    restored. Returns (batches, images, layers recomputed); no layers: `inputs` is not iterated."""
    norms = {n: m for n, m in batch_norms(module).items() if names is None or n in names}
    if not norms:
        return 0, 0, 0
    modes = [(m, m.training) for m in module.modules()]
    kept = {n: (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for n, m in norms.items()}
    batches = images = 0
    try:
        module.eval()
        for m in norms.values():
            m.reset_running_stats()  # mean 0, variance 1, counter 0
            m.momentum = None        # the cumulative average of the batch statistics
            m.train()
        for x in inputs:
            module(x)
            batches += 1
            images += len(x)
    finally:
        for m, training in modes:
            m.training = training
        for name, m in norms.items():
            momentum, mean, var, counted = kept[name]
            m.momentum = momentum
            if not batches or int(m.num_batches_tracked) == 0:  # a layer the pass did not reach: as it was
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
            m.num_batches_tracked.copy_(counted)  # training's count of batches, as it was
    if dist.enabled and batches:
        # every process reaches the same layers (the same network and number of batches), in the same order
        for m in norms.values():
            dist.all_reduce_mean_(m.running_mean)
            dist.all_reduce_mean_(m.running_var)
    return batches, images, len(norms)
