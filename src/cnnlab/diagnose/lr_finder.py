"""Learning-rate range test (Smith 2015, "Cyclical Learning Rates for Training Neural Networks", sec. 3.3).

Train for a few hundred steps while the learning rate grows exponentially from tiny to huge, record the loss,
and read the curve (`suggest`): the rate where its centred average falls fastest and a band of good rates
around it, or why the curve allows no suggestion. The model, the optimizer (state and hyper-parameters) and the
global RNGs are restored afterwards, also when the test fails.

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

# The rule reads a centred moving average of the raw losses, this many decades of lr either side of each point:
# unlike the exponential average (whose lag at smooth=0.98 is 50 steps, 3.5 decades at 100 steps), it does not
# shift the curve towards higher rates.
SMOOTH_DECADES = 0.25
# A fall counts once it is this many times the centred average's noise (the raw losses' scatter around it,
# divided by the square root of the window) and at least MIN_RELATIVE_DROP of the starting loss.
NOISE_SIGMAS = 4.0
MIN_RELATIVE_DROP = 0.01
# The suggestion is the steepest fall of the centred curve before its minimum; the band of rates that train well
# is [suggestion / BAND_BELOW, suggestion * BAND_ABOVE], capped at BAND_CAP x the minimum's rate (one-cycle's
# warm-up lets a run peak above the rate at which a constant-rate test turns). The rule and the factors come
# from the measurements in docs/lr_finder.md (scripts/lr_finder_study.py).
BAND_BELOW = 10.0
BAND_ABOVE = 10.0
BAND_CAP = 3.0
# A run without warm-up (scheduler=none, step, cosine... from the first step at optimizer.lr) cannot go above
# where the test's loss turns, and trains well further below the suggestion: [suggestion / 30, suggestion x 10]
# capped at the minimum's rate, measured the same way with constant-rate trainings (docs/lr_finder.md).
CONSTANT_BAND_BELOW = 30.0
CONSTANT_BAND_CAP = 1.0
# For such a run the suggestion is a tenth of the minimum's rate (over LeNet-5 and ResNet-20 at constant rates the
# rule closest to the best rate; the steepest fall lies higher, nearer where constant-rate training breaks down).
CONSTANT_DIVISOR = 10.0
RULES = {True: "steepest fall", False: "a tenth of the minimum's rate, for a run without warm-up"}
# The test needs this many points before it can read anything.
MIN_POINTS = 8


@dataclass
class LRRange:
    """What a range test recorded and what the rule read from it. `lrs` are the first param group's rates (cnnlab
    puts the head's, i.e. optimizer.lr, first); every other group ran at its own rate scaled by the same factor."""

    lrs: list[float]
    losses: list[float]          # raw training loss of each step
    smoothed: list[float]        # bias-corrected exponential moving average of `losses` (what stops the test)
    suggestion: float | None     # the rate to train at (see `suggest`), None when the curve does not allow one
    min_loss_lr: float | None    # the rate at the minimum of the centred curve
    diverged_at: float | None    # the rate at which the test stopped early (loss blew up or was not finite)
    reason: str | None = None    # why there is no suggestion: what the curve showed
    curve: list[float] = field(default_factory=list, repr=False)  # centred moving average of `losses`
    band: tuple[float, float] | None = None  # good rates around the suggestion: a configured rate in it is fine
    cause: str | None = None     # no suggestion because: exploded | narrow_low | narrow_high | steps | flat
    advice: str | None = None    # what to do about `cause`
    suggestion_index: int | None = field(default=None, repr=False)  # index of `suggestion` in lrs (or nearest)
    momentum: float | None = field(default=None, repr=False)  # SGD's momentum or Adam's beta1, if any
    rule: str = RULES[True]      # how the suggestion was read (it depends on whether the run warms up)


def lr_range_test(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batches: Iterable, *,
                  device: torch.device | str, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200,
                  smooth: float = 0.98, diverge: float = 4.0, autocast: Callable = contextlib.nullcontext,
                  scaler: torch.amp.GradScaler | None = None, warmup: bool = True) -> LRRange:
    """Run the range test on (x, y) `batches` (cycled through as often as needed), then restore everything.

    The first param group's lr goes from start_lr to end_lr in `steps` multiplicative steps; every group keeps
    its ratio to the first (no decay on biases, a backbone at a fraction of the head's rate). The test stops
    early once the smoothed loss exceeds `diverge` x its minimum. `autocast` is a context factory for the forward
    pass (e.g. a partial of torch.autocast); `scaler` a GradScaler for fp16. `warmup`: whether the run the rate is
    for warms up to it (one-cycle, warmup_epochs > 0), which widens the band of good rates upwards (`suggest`).
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    if steps < 2 or not 0 <= smooth < 1 or diverge <= 1:
        raise ValueError(f"need steps >= 2, 0 <= smooth < 1, diverge > 1; got {steps}, {smooth}, {diverge}")
    device = torch.device(device)
    saved = _snapshot(model, optimizer, scaler)
    try:
        return _run(model, optimizer, loss_fn, _cycle(batches), device, start_lr, end_lr, steps, smooth, diverge,
                    autocast, scaler, warmup)
    finally:
        _restore(model, optimizer, scaler, saved)


def _run(model, optimizer, loss_fn, batches, device, start_lr, end_lr, steps, smooth, diverge, autocast, scaler,
         warmup):
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
    return suggest(lrs, losses, smoothed=smoothed, diverged_at=diverged_at, end_lr=end_lr,
                   momentum=_momentum(optimizer), warmup=warmup)


def _momentum(optimizer) -> float | None:
    group = optimizer.param_groups[0]
    if group.get("momentum"):
        return float(group["momentum"])
    if "betas" in group:
        return float(group["betas"][0])
    return None


def suggest(lrs, losses, *, smoothed=None, diverged_at: float | None = None, end_lr: float | None = None,
            momentum: float | None = None, warmup: bool = True) -> LRRange:
    """Read a range test's curve: a suggestion and the band of good rates, or why there is none.

    A pure function of the rates and raw losses (and, for the advice, where the test stopped, the end rate it
    aimed at and the optimizer's momentum). The losses are smoothed by a centred moving average over
    +-SMOOTH_DECADES of lr (no lag). The loss has fallen when the centred curve's minimum lies NOISE_SIGMAS x its
    noise below its start. The suggestion is the steepest fall of the centred curve before its minimum
    (torch-lr-finder's and fastai's `steep`, on a curve without the exponential average's lag), the band
    [suggestion / BAND_BELOW, suggestion * BAND_ABOVE] capped at BAND_CAP x the minimum for a run that warms up
    to its rate (one-cycle, warmup_epochs > 0), [suggestion / CONSTANT_BAND_BELOW, suggestion * BAND_ABOVE]
    capped at CONSTANT_BAND_CAP x the minimum for one that starts at it (`warmup=False`): docs/lr_finder.md has
    the measurements behind the rule and each constant.

    Without a suggestion, `cause` says why: exploded (too few finite points), narrow_low (falling from the
    first step), narrow_high (still falling at the end), steps (flat, then blew up without a visible fall: too
    few steps per decade, more so with momentum), flat (no fall up to end_lr and no blow-up: nothing learns).
    """
    lrs, losses = [float(v) for v in lrs], [float(v) for v in losses]
    result = LRRange(lrs, losses, list(smoothed) if smoothed is not None else [], None, None, diverged_at,
                     momentum=momentum)
    if len(lrs) < MIN_POINTS:
        where = f" (it blew up at lr={diverged_at:.2g})" if diverged_at is not None else ""
        return _no_suggestion(result, "exploded", (
            f"only {len(lrs)} finite steps before the test stopped{where}: the loss blew up almost at once"), (
            "lower doctor.lr_range.start_lr; if the loss is not finite even at tiny rates, see 'initial loss' "
            "and 'output layer'"))
    x = np.log10(lrs)
    per_decade = (len(x) - 1) / max(x[-1] - x[0], 1e-12)
    half = max(2, int(round(SMOOTH_DECADES * per_decade)))
    curve = _centred_mean(np.asarray(losses), half)
    result.curve = curve.tolist()
    residual = np.asarray(losses) - curve
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual)))) / math.sqrt(2 * half + 1)
    start, lowest = float(curve[0]), int(np.argmin(curve))
    result.min_loss_lr = lrs[lowest]
    drop = start - float(curve[lowest])
    threshold = max(NOISE_SIGMAS * noise, MIN_RELATIVE_DROP * abs(start))
    described = (f"centred loss {start:.4g} at lr={lrs[0]:.2g}, lowest {curve[lowest]:.4g} at lr={lrs[lowest]:.2g}, "
                 f"noise {noise:.2g}; {per_decade:.0f} steps per decade")
    if drop <= threshold:
        if diverged_at is not None:
            lag = ""
            if momentum:
                lag = (f"; with momentum {momentum:g} the loss answers a new rate about {1 / (1 - momentum):.0f} "
                       f"steps late, {1 / (1 - momentum) / per_decade:.1f} decades here, so it falls late")
            return _no_suggestion(result, "steps", (
                f"inconclusive: the loss stayed flat, then blew up at lr={diverged_at:.2g} without a fall the test "
                f"could resolve ({described}){lag}"), (
                f"give the test more steps per decade: doctor.lr_range.steps={max(300, 3 * len(lrs))} (or a "
                f"narrower range below the rate where it blew up, e.g. doctor.lr_range.start_lr={lrs[-1] / 1e4:.0e})"))
        if end_lr is not None and lrs[-1] < 0.5 and lrs[-1] >= 0.99 * end_lr:
            return _no_suggestion(result, "narrow_high", (
                f"the loss never started falling up to end_lr={end_lr:g} ({described})"), (
                "raise doctor.lr_range.end_lr (e.g. to 10)"))
        return _no_suggestion(result, "flat", (
            f"the loss never decreased, even at lr={lrs[-1]:.2g}, and never blew up ({described})"), (
            "no learning rate trains this model: check the data, the labels and the model's output (a frozen "
            "model, gradients cut off or vanishing, see 'gradient flow'; a loss that does not fit the output)"))
    if lowest >= len(lrs) - half and diverged_at is None:
        return _no_suggestion(result, "narrow_high", (
            f"the loss was still falling at the last rate, lr={lrs[-1]:.2g} ({described})"), (
            f"raise doctor.lr_range.end_lr (e.g. to {lrs[-1] * 100:.0e}) so that the test sees where it turns"))
    ahead = min(max(half, int(round(0.5 * per_decade))), lowest)  # half a decade in
    if start - float(curve[ahead]) > max(0.2 * drop, threshold) or lowest <= half:
        return _no_suggestion(result, "narrow_low", (
            f"the loss was falling from the first rate, lr={lrs[0]:.2g} ({described})"), (
            f"lower doctor.lr_range.start_lr (e.g. to {lrs[0] / 100:.0e}) so that the test sees where it starts"))
    slopes = np.gradient(curve, x)  # central differences: the point before the minimum sees the turn
    steepest = int(np.argmin(slopes[:lowest]))
    result.suggestion, result.suggestion_index = lrs[steepest], steepest
    below, cap = (BAND_BELOW, BAND_CAP) if warmup else (CONSTANT_BAND_BELOW, CONSTANT_BAND_CAP)
    result.band = (lrs[steepest] / below, min(lrs[steepest] * BAND_ABOVE, lrs[lowest] * cap))
    if not warmup:  # nearest tested rate to a tenth of the minimum's (inside the band: steepest < minimum)
        index = int(np.argmin(np.abs(x - math.log10(lrs[lowest] / CONSTANT_DIVISOR))))
        result.suggestion, result.suggestion_index, result.rule = lrs[index], index, RULES[False]
    return result


def _no_suggestion(result: LRRange, cause: str, reason: str, advice: str) -> LRRange:
    result.cause, result.reason, result.advice = cause, reason, advice
    return result


def _centred_mean(values: np.ndarray, half: int) -> np.ndarray:
    """Mean of values[i - half : i + half + 1] for each i, the window cut at both ends."""
    sums = np.concatenate([[0.0], np.cumsum(values)])
    index = np.arange(len(values))
    low, high = np.maximum(index - half, 0), np.minimum(index + half + 1, len(values))
    return (sums[high] - sums[low]) / (high - low)


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
    """Loss against lr on a log axis: raw loss thin, the centred curve bold, the band of good rates shaded, the
    suggestion and the minimum marked (or the reason there is no suggestion)."""
    from cnnlab.util.plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    ax.plot(result.lrs, result.losses, color="tab:blue", linewidth=0.7, alpha=0.45, label="loss per step")
    curve = result.curve or result.smoothed
    if curve:
        ax.plot(result.lrs, curve, color="tab:blue", linewidth=2.2, label="centred average")
    if result.band is not None:
        ax.axvspan(*result.band, color="tab:green", alpha=0.12,
                   label=f"good rates {result.band[0]:.1e} .. {result.band[1]:.1e}")
    if result.min_loss_lr is not None and curve:
        lowest = result.lrs.index(result.min_loss_lr)
        ax.plot(result.min_loss_lr, curve[lowest], "v", color="tab:gray", markersize=9,
                label=f"minimum at lr={result.min_loss_lr:.1e}")
    if result.suggestion is not None:
        ax.plot(result.suggestion, curve[result.suggestion_index], "o", color="tab:red", markersize=9,
                label=f"suggested lr={result.suggestion:.1e}", zorder=3)
    else:
        ax.text(0.02, 0.04, f"no suggestion: {result.reason}", transform=ax.transAxes, fontsize=8, wrap=True)
    if curve:  # from the lowest raw loss to a little above the start: the divergence would squash it
        low, high = min(result.losses), max(curve[:max(1, len(curve) // 4)])
        ax.set_ylim(low - 0.05 * (high - low), high + 0.25 * (high - low) + 1e-6)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    return save(fig, path)
