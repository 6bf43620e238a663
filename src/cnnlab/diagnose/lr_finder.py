"""Learning-rate range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks", sec. 3.3).

Train for a few hundred steps while the learning rate grows exponentially from tiny to huge, record the loss,
smooth it, and suggest the rate where the smoothed loss falls fastest. The model, the optimizer (state and
hyper-parameters) and the global RNGs are restored afterwards, also when the test fails.

Why not torch-lr-finder (the reference in tests/test_lr_finder.py and scripts/bench_lr_finder.py): it refuses
an optimizer with a scheduler attached (cnnlab's always has one), sets every param group to the same start lr
(losing the backbone/head ratio), leaves restoring to a separate reset() and never restores RNG state, passes
the model's raw output to the loss (GoogLeNet's tuple breaks it), and wants a GradScaler even for bf16.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cnnlab.engine.stepping import split_outputs
from cnnlab.engine.seeding import rng_state, set_rng_state

# The first steps run at rates that change nothing; their smoothed loss is mostly the EMA settling in.
# torch-lr-finder's plot skips the same number of points (skip_start=10).
SKIP_START = 10
# A smoothed loss that falls by less than this fraction over the whole test has not really fallen: with
# smooth=0.98 the EMA's batch-to-batch noise is a fraction of a percent, so 2% is well above it.
MIN_RELATIVE_DROP = 0.02


@dataclass
class LRRange:
    """What a range test recorded. `lrs` are the first param group's rates (cnnlab puts the head's, i.e.
    optimizer.lr, first); every other group ran at its own rate scaled by the same factor."""

    lrs: list[float]
    losses: list[float]          # raw training loss of each step
    smoothed: list[float]        # bias-corrected exponential moving average of `losses`
    suggestion: float | None     # the rate at the steepest fall of the smoothed loss before its minimum
    min_loss_lr: float | None    # the rate at the smoothed loss's minimum
    diverged_at: float | None    # the rate at which the test stopped early (loss blew up or was not finite)
    reason: str | None = None    # why there is no suggestion
    steepest_index: int | None = field(default=None, repr=False)  # index of `suggestion` in lrs


def lr_range_test(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batches: Iterable, *,
                  device: torch.device | str, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200,
                  smooth: float = 0.98, diverge: float = 4.0, autocast: Callable = contextlib.nullcontext,
                  scaler: torch.amp.GradScaler | None = None) -> LRRange:
    """Run the range test on (x, y) `batches` (cycled through as often as needed), then restore everything.

    The first param group's lr goes from start_lr to end_lr in `steps` multiplicative steps; every group keeps
    its ratio to the first (no decay on biases, a backbone at a fraction of the head's rate). The test stops
    early once the smoothed loss exceeds `diverge` x its minimum. `autocast` is a context factory for the forward
    pass (e.g. a partial of torch.autocast); `scaler` a GradScaler for fp16.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    if steps < 2 or not 0 <= smooth < 1 or diverge <= 1:
        raise ValueError(f"need steps >= 2, 0 <= smooth < 1, diverge > 1; got {steps}, {smooth}, {diverge}")
    device = torch.device(device)
    saved = _snapshot(model, optimizer, scaler)
    try:
        return _run(model, optimizer, loss_fn, _cycle(batches), device, start_lr, end_lr, steps, smooth, diverge,
                    autocast, scaler)
    finally:
        _restore(model, optimizer, scaler, saved)


def _run(model, optimizer, loss_fn, batches, device, start_lr, end_lr, steps, smooth, diverge, autocast, scaler):
    ratios = [group["lr"] / optimizer.param_groups[0]["lr"] for group in optimizer.param_groups]
    factor = (end_lr / start_lr) ** (1.0 / (steps - 1))
    lrs, losses, smoothed = [], [], []
    average, best, diverged_at = 0.0, math.inf, None
    model.train()
    for step in range(steps):
        lr = start_lr * factor ** step
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            loss = loss_fn(split_outputs(model(x))[0], y)
        value = loss.item()
        if not math.isfinite(value):
            diverged_at = lr
            break
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        average = smooth * average + (1 - smooth) * value
        current = average / (1 - smooth ** (step + 1))  # bias correction: the average starts at 0
        lrs.append(lr)
        losses.append(value)
        smoothed.append(current)
        best = min(best, current)
        if current > diverge * best:
            diverged_at = lr
            break
    return _suggest(lrs, losses, smoothed, diverged_at)


def _suggest(lrs, losses, smoothed, diverged_at) -> LRRange:
    """The steepest fall of the smoothed loss against log10(lr), between SKIP_START and the minimum.

    This is fastai's `steep` and torch-lr-finder's suggestion, with one change: points after the minimum are
    ignored, since a fall there (a spike recovering on the way to divergence) is no rate to train at. fastai's
    `valley` (the middle of the longest descent) is often a little lower and less sensitive to noise, but needs
    more tuning constants; the steepest point is the rule Smith's paper and both libraries share.
    """
    result = LRRange(lrs, losses, smoothed, None, None, diverged_at)
    if not smoothed:
        result.reason = "the loss was not finite from the first step"
        return result
    if len(smoothed) < SKIP_START + 3:
        result.reason = (f"too few points: the test stopped after {len(smoothed)} steps and the first {SKIP_START} "
                         f"are skipped; lower start_lr or raise steps")
        return result
    lowest = SKIP_START + int(np.argmin(smoothed[SKIP_START:]))
    result.min_loss_lr = lrs[lowest]
    start_value = smoothed[SKIP_START]
    if smoothed[lowest] > (1 - MIN_RELATIVE_DROP) * start_value:
        result.reason = (f"the loss never decreased (smoothed {start_value:.4g} -> at best {smoothed[lowest]:.4g}); "
                         f"check the data, the labels and the model's output before tuning the learning rate")
        return result
    if lowest - SKIP_START < 2:
        result.reason = f"too few points before the loss's minimum at step {lowest + 1}: lower start_lr"
        return result
    # Central differences over the whole curve, so that the slope at the last point before the minimum sees
    # the turn; a one-sided difference at the end of a slice would make the minimum itself look steepest.
    slopes = np.gradient(np.asarray(smoothed), np.log10(lrs))
    steepest = SKIP_START + int(np.argmin(slopes[SKIP_START:lowest]))
    result.suggestion, result.steepest_index = lrs[steepest], steepest
    return result


def _cycle(batches: Iterable) -> Iterator:
    """Batches forever: a new pass over `batches` each time one ends (a loader re-iterates its epoch)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch[0], batch[1]
        if empty:
            raise ValueError("the range test got no batches (an empty loader, or an iterator already used up)")


def _snapshot(model, optimizer, scaler) -> dict:
    # Deep copies: state_dict() hands out the live tensors, which the test's steps update in place.
    return {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
            "training": {name: m.training for name, m in model.named_modules()},
            "scaler": copy.deepcopy(scaler.state_dict()) if scaler is not None else None, "rng": rng_state()}


def _restore(model, optimizer, scaler, saved: dict) -> None:
    model.load_state_dict(saved["model"])  # copies into the existing parameters: the optimizer still holds them
    optimizer.load_state_dict(saved["optimizer"])  # also the groups' lrs, momenta and a scheduler's keys
    optimizer.zero_grad(set_to_none=True)
    for name, module in model.named_modules():
        module.training = saved["training"][name]
    if scaler is not None:
        scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])


def suggestion_override(result: LRRange, optimizer_key: str = "optimizer.lr") -> str | None:
    """The override to train with, e.g. "optimizer.lr=0.0032"; None without a suggestion (see result.reason).

    With finetune.backbone_lr_scale the suggestion is still the head's rate, which is what optimizer.lr sets.
    """
    if result.suggestion is None:
        return None
    return f"{optimizer_key}={float(f'{result.suggestion:.2g}')!r}"


def plot_lr_range(result: LRRange, path: Path | str, title: str = "Learning-rate range test") -> Path:
    """Loss against lr on a log axis: raw loss thin, smoothed bold, the suggestion and the minimum marked."""
    from cnnlab.util.plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    ax.plot(result.lrs, result.losses, color="tab:blue", linewidth=0.7, alpha=0.45, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", linewidth=2.2, label="smoothed loss")
    if result.min_loss_lr is not None:
        lowest = result.lrs.index(result.min_loss_lr)
        ax.plot(result.min_loss_lr, result.smoothed[lowest], "v", color="tab:gray", markersize=9,
                label=f"minimum at lr={result.min_loss_lr:.1e}")
    if result.suggestion is not None:
        ax.plot(result.suggestion, result.smoothed[result.steepest_index], "o", color="tab:red", markersize=9,
                label=f"suggested lr={result.suggestion:.1e}", zorder=3)
    else:
        ax.text(0.02, 0.04, f"no suggestion: {result.reason}", transform=ax.transAxes, fontsize=8, wrap=True)
    if result.smoothed:  # from the lowest raw loss to a little above the start: the divergence would squash it
        low, high = min(result.losses), max(result.smoothed[:SKIP_START + 1])
        ax.set_ylim(low - 0.05 * (high - low), high + 0.25 * (high - low))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    return save(fig, path)
