"""What every explain picture shares: a grid of image panels, images brought back to pixel values, PNG output.

Figures are built with matplotlib's object API (matplotlib.figure.Figure), never pyplot: no global figure
registry and no backend choice, so drawing works the same with or without a display.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

PANEL_INCHES = 1.3   # side of one image panel: a 32x32 image is then shown at about 4x
DPI = 100
TITLE_SIZE = 11
TITLE_CHAR_INCHES = 0.085  # width of one title character at TITLE_SIZE points, to wrap titles at the figure's width
TITLE_LINE_INCHES = 0.2    # height of one title line
MIN_WIDTH = 5.0


def panel_grid(rows: int, cols: int, title: str, panel: float = PANEL_INCHES, title_room: float = 0.5):
    """A figure of rows x cols panels with their axes hidden, and the figure's title above them, wrapped to the
    panels' width (at least MIN_WIDTH inches) rather than widening the figure around small panels."""
    width = max(cols * panel, MIN_WIDTH)
    lines = title.splitlines()
    wrapped = [part for line in lines for part in textwrap.wrap(line, int(width / TITLE_CHAR_INCHES)) or [""]]
    height = rows * panel + title_room + TITLE_LINE_INCHES * (len(wrapped) - len(lines))
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("\n".join(wrapped), fontsize=TITLE_SIZE)
    return fig, axes


def columns_for(n: int, max_cols: int = 8) -> int:
    """Columns of a grid of n panels: up to max_cols, fewer for a handful."""
    return max(1, min(n, max_cols, math.ceil(math.sqrt(n * 2))))


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised model inputs (N, C, H, W) back to [0, 1] pixel values, for display."""
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    return (images.detach().float().cpu() * std_t + mean_t).clamp(0, 1)


def show_image(ax, image: torch.Tensor) -> None:
    """A (C, H, W) image in [0, 1]: greyscale for one channel, RGB for three."""
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image[:3].permute(1, 2, 0).numpy(), interpolation="nearest")


def save_png(fig: Figure, path: Path) -> Path:
    """The figure as a PNG file, written atomically with cnnlab's PNG mark (cnnlab.util.outpaths)."""
    from cnnlab.util.outpaths import figure_png, write_atomic

    return write_atomic(Path(path), figure_png(fig, DPI))
