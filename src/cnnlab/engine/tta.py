"""Test-time augmentation for cnnlab-eval: every image is classified as several views (flip, five_crop,
ten_crop), the softmax outputs of the views are averaged; the views and how they are cut: docs/evaluation.md,
"Test-time augmentation".

`TTAModel` returns log(mean of the views' softmax), so argmax, top-k and the confusion matrix use the
averaged probabilities, and cross-entropy on its output is the negative log-likelihood of the averaged
probabilities.
"""

from __future__ import annotations

import math
from typing import get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlab.errors import ConfigError
from cnnlab.config.fields import TtaMode

VIEWS = {"none": 1, "flip": 2, "five_crop": 5, "ten_crop": 10}
CROPS = ("five_crop", "ten_crop")
assert set(VIEWS) == set(get_args(TtaMode))


def default_resize(input_size) -> list[int]:
    """The size the image is resized to before cropping when tta_resize is null: input size x 256 / 224,
    as the ImageNet recipe takes 224-pixel crops of a 256-pixel image."""
    return [round(s * 256 / 224) for s in input_size]


def resolve_resize(tta: str, tta_resize, input_size) -> list[int] | None:
    """The [height, width] the crop modes resize to (None for none/flip), checked against the crop size.

    tta_resize: null (default_resize), N (the shorter side becomes N, the aspect ratio kept, like
    torchvision's Resize(N)) or [height, width]."""
    if tta not in CROPS:
        if tta_resize is not None:
            raise ConfigError(f"tta_resize={tta_resize}: only the crop modes resize (tta=five_crop or ten_crop); "
                              f"tta={tta}")
        return None
    h, w = (int(s) for s in input_size)
    if tta_resize is None:
        size = default_resize((h, w))
    elif isinstance(tta_resize, int):
        scale = tta_resize / min(h, w)
        size = [round(h * scale), round(w * scale)]
    else:
        size = [int(s) for s in tta_resize]
    from cnnlab.config.limits import side_problem

    problem = side_problem("tta_resize", tta_resize, size)
    if problem:
        raise ConfigError(problem.replace("resize or tile the images", f"the image resized to {size[0]}x{size[1]} "
                                          f"would not fit; give a size near the input size ({h}x{w})"))
    if size[0] < h or size[1] < w:
        raise ConfigError(f"tta_resize={tta_resize}: the image resized to {size[0]}x{size[1]} is smaller than the "
                          f"{h}x{w} crops (data.input_size={[h, w]}); give at least the input size")
    return size


def five_crops(x: torch.Tensor, size) -> list[torch.Tensor]:
    """Top-left, top-right, bottom-left, bottom-right and centre crops of a batch (torchvision's five_crop)."""
    ch, cw = size
    h, w = x.shape[-2:]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return [x[..., :ch, :cw], x[..., :ch, w - cw:], x[..., h - ch:, :cw], x[..., h - ch:, w - cw:],
            x[..., top:top + ch, left:left + cw]]


def views(x: torch.Tensor, tta: str, crop_size, resize) -> list[torch.Tensor]:
    """The views of a batch (N, C, H, W) that `tta` averages over."""
    if tta == "none":
        return [x]
    if tta == "flip":
        return [x, x.flip(-1)]
    if list(x.shape[-2:]) != list(resize):
        x = F.interpolate(x, size=tuple(resize), mode="bilinear", align_corners=False)
    crops = five_crops(x, crop_size)
    return crops + five_crops(x.flip(-1), crop_size) if tta == "ten_crop" else crops


class TTAModel(nn.Module):
    """model(view) for every view of the batch -> log of the mean softmax (see the module docstring)."""

    def __init__(self, model: nn.Module, tta: str, crop_size, resize=None):
        super().__init__()
        self.model, self.tta = model, tta
        self.crop_size = [int(s) for s in crop_size]
        self.resize = resize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = []
        for view in views(x, self.tta, self.crop_size, self.resize):
            out = self.model(view.contiguous())
            logits = out if isinstance(out, torch.Tensor) else out[0]  # auxiliary heads: the main one
            log_probs.append(logits.float().log_softmax(dim=1))
        return torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(log_probs))
