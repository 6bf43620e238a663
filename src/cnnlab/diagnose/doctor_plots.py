"""The doctor's PNG plots: the labelled sample grid, the overfit curve, per-layer gradients, activation health."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cnnlab.util.plotting import pyplot, save


def plot_samples(images: np.ndarray, titles: list[str], path: Path, title: str) -> Path:
    """A grid of images (N, C, H, W in [0, 1]) each titled with its label."""
    plt = pyplot()
    n = len(images)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.4), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = images[i]
        if image.shape[0] == 1:
            ax.imshow(image[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.transpose(image[:3], (1, 2, 0)), interpolation="nearest")
        ax.set_title(titles[i], fontsize=9)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def plot_overfit(losses: list[float], accs: list[tuple[int, float]], target: float, path: Path, title: str) -> Path:
    """Training loss per step (log scale) and the accuracy on the memorised batches."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    steps = np.arange(1, len(losses) + 1)
    finite = np.isfinite(losses) & (np.asarray(losses) > 0)
    ax.plot(steps[finite], np.asarray(losses)[finite], color="tab:blue", label="training loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (log scale)", color="tab:blue")
    twin = ax.twinx()
    if accs:
        twin.plot(*zip(*accs), "o-", color="tab:orange", markersize=3, label="accuracy on these images")
    twin.axhline(target, color="tab:orange", linestyle=":", linewidth=1)
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("accuracy", color="tab:orange")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    return save(fig, path)


def plot_gradients(names: list[str], init: list[float], trained: list[float] | None, updates: list[float],
                   flagged: set[str], path: Path, title: str) -> Path:
    """Two panels, layers in forward order top to bottom: |grad| / |weight| at init and after the steps, and
    the median per-step update / weight ratio. Flagged layers are named in red."""
    plt = pyplot()
    y = np.arange(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.38 * len(names)), sharey=True,
                                      layout="constrained")
    height = 0.38 if trained is not None else 0.7
    left.barh(y - (height / 2 if trained is not None else 0), _positive(init), height, color="tab:blue",
              label="at initialisation")
    if trained is not None:
        left.barh(y + height / 2, _positive(trained), height, color="tab:green", label="after the steps")
    left.set_xscale("log")
    left.set_xlabel("|gradient| / |weight| per layer (log scale)")
    fig.legend(loc="outside lower left", ncols=2, fontsize=8)
    right.barh(y, _positive(updates), 0.6, color="tab:purple")
    right.axvline(1e-3, color="gray", linestyle=":", linewidth=1)
    right.set_xscale("log")
    right.set_xlabel("median |update| / |weight| per step (log; dotted: 1e-3)")
    left.set_yticks(y, names)
    for label in left.get_yticklabels():
        if label.get_text() in flagged:
            label.set_color("tab:red")
    left.invert_yaxis()  # the first layer on top
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def _positive(values):
    """Log axes cannot show 0 or NaN: such bars are drawn at a tiny value (and named in the report)."""
    return [v if v is not None and np.isfinite(v) and v > 0 else 1e-12 for v in values]


def plot_activations(names: list[str], kinds: list[str], init: list[float], trained: list[float] | None,
                     limit: float, path: Path, title: str) -> Path:
    """Per activation call: dead-unit fraction (ReLU) or saturated fraction (sigmoid/tanh), init and trained."""
    plt = pyplot()
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.38 * len(names)), layout="constrained")
    height = 0.38 if trained is not None else 0.7
    ax.barh(y - (height / 2 if trained is not None else 0), init, height, color="tab:blue", label="at initialisation")
    if trained is not None:
        ax.barh(y + height / 2, trained, height, color="tab:green", label="after the steps")
    ax.axvline(limit, color="tab:red", linestyle=":", linewidth=1, label=f"warning above {limit:g}")
    ax.set_yticks(y, [f"{n} ({'dead' if k == 'relu' else 'saturated'})" for n, k in zip(names, kinds)])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction: ReLU units dead on the whole batch / sigmoid, tanh outputs saturated")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return save(fig, path)
