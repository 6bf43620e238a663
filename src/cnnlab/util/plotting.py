"""matplotlib for the commands that write PNG files: imported on first use (it is heavy), with the Agg backend
(files only: no display is needed, or touched), and one way of saving a figure."""

from __future__ import annotations

from pathlib import Path

DPI = 100  # 9 x 5 inch figures -> 900 x 500 pixel PNGs, readable in a Markdown page


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path | str) -> Path:
    """Write `fig` as PNG to `path` (its folder made if missing; atomically, with cnnlab's PNG mark:
    cnnlab.util.outpaths) and close it: pyplot keeps every open figure alive."""
    from cnnlab.util.outpaths import figure_png, write_atomic

    try:
        data = figure_png(fig, DPI)
    finally:
        pyplot().close(fig)
    return write_atomic(Path(path), data)
