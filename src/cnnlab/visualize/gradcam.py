"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies, by captum's LayerGradCam.

The layer's feature maps are weighted by the mean gradient of the class score over each map, summed and
rectified, then upsampled to the input size (LayerAttribution.interpolate). Captum, PyTorch's own
interpretability library, does the hooks and gradients; this module chooses the target and draws the overlay.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from captum.attr import LayerAttribution, LayerGradCam

from cnnlab.visualize.figures import panel_grid, show_image

HEAT_ALPHA = 0.5


def gradcam_maps(model: nn.Module, layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, H, W) non-negative heat maps at the input's size: the evidence for class targets[i] in inputs[i]."""
    cam = LayerGradCam(model, layer)
    with torch.enable_grad():
        attribution = cam.attribute(inputs, target=targets.tolist(), relu_attributions=True)
    upsampled = LayerAttribution.interpolate(attribution, tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
    return upsampled.detach().float().cpu()[:, 0].clamp_min(0)


def gradcam_figure(layer_name: str, images: torch.Tensor, maps: torch.Tensor, true: list[str | None],
                   predicted: list[str], probs: list[float]):
    """Each image next to its heat map overlay, titled with the predicted label and its probability (green
    when right, red when wrong, black when the true label is unknown) and the true label."""
    n = images.shape[0]
    pairs_per_row = min(n, 4)
    rows = -(-n // pairs_per_row)
    title = (f"Grad-CAM at {layer_name} for the predicted class\n"
             f"red = the regions that raised that class's score most (each map scaled to its own maximum)")
    fig, axes = panel_grid(rows, 2 * pairs_per_row, title, panel=1.4, title_room=0.8)
    for i in range(n):
        r, c = divmod(i, pairs_per_row)
        plain, overlay = axes[r, 2 * c], axes[r, 2 * c + 1]
        show_image(plain, images[i])
        show_image(overlay, images[i])
        heat = maps[i] / maps[i].max() if maps[i].max() > 0 else maps[i]
        overlay.imshow(heat.numpy(), cmap="jet", alpha=HEAT_ALPHA, vmin=0, vmax=1, interpolation="bilinear")
        known = true[i] is not None
        colour = "black" if not known else ("green" if true[i] == predicted[i] else "red")
        overlay.set_title(f"pred {predicted[i]} ({probs[i]:.2f})", fontsize=8, color=colour)
        plain.set_title(f"true {true[i]}" if known else "true: unknown", fontsize=8)
    return fig
