"""A conv layer's learned filters (its weights) as a grid of small images.

- A layer reading RGB (in_channels == 3, the first layer of a colour model): one RGB tile per filter, each
  filter scaled to [0, 1] on its own, so a filter's colour says which colour it responds to.
- Any other layer: one row per filter, one tile per input channel, on a diverging colour scale centred at zero
  (red positive, blue negative) shared by the filter's tiles. Averaging over the input channels instead would
  cancel the opposite-signed weights that make up most of what a deeper filter does; the rows keep them.
  A single-channel first layer (greyscale images) is the one-column case, drawn in rows of tiles.
Big layers are cut to their first MAX_FILTERS filters and MAX_INPUTS input channels; the title says so.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.visualize.figures import columns_for, panel_grid

MAX_FILTERS = 32
MAX_INPUTS = 16
FILTER_PANEL = 0.55  # inches per tile: kernels are tiny, 3x3 or 5x5


def filters_figure(conv: nn.Conv2d, name: str, title: str = ""):
    weight = conv.weight.detach().float().cpu()  # (out, in / groups, kh, kw)
    out_ch, in_ch, kh, kw = weight.shape
    shown = weight[:MAX_FILTERS]
    cut = f" (first {len(shown)} of {out_ch})" if out_ch > len(shown) else ""
    head = f"{title}{name}: {out_ch} filters of {in_ch}x{kh}x{kw}{cut}"
    if in_ch == 3:
        return _rgb_filters(shown, head + "\neach filter scaled to its own range; its colour is what it responds to")
    if in_ch == 1:
        return _single_channel_filters(shown, head)
    return _filters_by_input_channel(shown, head)


def _rgb_filters(weight: torch.Tensor, title: str):
    n = weight.shape[0]
    cols = columns_for(n, 8)
    rows = -(-n // cols)
    fig, axes = panel_grid(rows, cols, title, panel=0.8, title_room=0.7)
    flat = weight.reshape(n, -1)
    lo, hi = flat.min(1).values.view(n, 1, 1, 1), flat.max(1).values.view(n, 1, 1, 1)
    scaled = (weight - lo) / (hi - lo).clamp_min(1e-8)
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(scaled[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(str(i), fontsize=7)
    return fig


def _single_channel_filters(weight: torch.Tensor, title: str):
    n = weight.shape[0]
    cols = columns_for(n, 8)
    rows = -(-n // cols)
    fig, axes = panel_grid(rows, cols, title + "\nred: positive weight, blue: negative, each filter on its own scale",
                           panel=0.9, title_room=0.7)
    for i in range(n):
        ax = axes.flat[i]
        limit = float(weight[i].abs().max()) or 1.0
        ax.imshow(weight[i, 0].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(str(i), fontsize=7)
    return fig


def _filters_by_input_channel(weight: torch.Tensor, title: str):
    n, in_ch = weight.shape[:2]
    cols = min(in_ch, MAX_INPUTS)
    cut = f" (first {cols} of {in_ch} input channels)" if in_ch > cols else ""
    fig, axes = panel_grid(n, cols, f"{title}\nrow: a filter, column: the input channel it weighs{cut}; "
                           f"red positive, blue negative, one scale per filter", panel=FILTER_PANEL, title_room=0.8)
    for i in range(n):
        limit = float(weight[i, :cols].abs().max()) or 1.0
        for j in range(cols):
            axes[i, j].imshow(weight[i, j].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        axes[i, 0].text(-0.15, 0.5, str(i), transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=7)
    for j in range(cols):
        axes[0, j].set_title(str(j), fontsize=7)
    return fig
