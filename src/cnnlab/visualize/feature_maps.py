"""Feature maps: what chosen layers output for given images, captured with forward hooks.

One figure per layer: a row per image, the image itself first, then the layer's first MAX_CHANNELS channels.
A row shares one colour scale (viridis, bright = strong), so a channel that stays dark for that image is one
the image does not excite, and the columns are the same channels in every row.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.visualize.figures import panel_grid, show_image

MAX_CHANNELS = 16


def capture(model: nn.Module, layers: dict[str, nn.Module], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of `layers` (name -> module) for one forward pass of `inputs`, on the CPU."""
    captured, handles = {}, []
    for name, module in layers.items():
        def hook(_module, _inputs, output, name=name):
            captured[name] = output.detach().float().cpu()
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def feature_maps_figure(name: str, maps: torch.Tensor, images: torch.Tensor, labels: list[str]):
    """maps: (N, C, H, W) outputs of layer `name`; images: (N, C, H, W) in [0, 1]; labels: one line per image."""
    n, channels = maps.shape[:2]
    shown = min(channels, MAX_CHANNELS)
    cut = f", the first {shown}" if channels > shown else ""
    title = (f"feature maps of {name}: {channels} channels of {maps.shape[2]}x{maps.shape[3]}{cut}\n"
             f"one colour scale per row (bright = strong response)")
    fig, axes = panel_grid(n, shown + 1, title, panel=0.85, title_room=0.8)
    for i in range(n):
        show_image(axes[i, 0], images[i])
        axes[i, 0].set_title(labels[i], fontsize=7)
        row = maps[i, :shown]
        lo, hi = float(row.min()), float(row.max())
        for c in range(shown):
            axes[i, c + 1].imshow(row[c].numpy(), cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1,
                                  interpolation="nearest")
            if i == 0:
                axes[i, c + 1].set_title(f"ch {c}", fontsize=7)
    return fig
