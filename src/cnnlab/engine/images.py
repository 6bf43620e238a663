"""Small image renderers for TensorBoard: grids of images or filters, and a confusion-matrix heat map.

Written here rather than taken from torchvision.utils.make_grid because importing torchvision costs
more than a second of start-up, which every run would pay for a few lines of tensor code.
"""

from __future__ import annotations

import math

import torch


def grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1, normalize_each: bool = False) -> torch.Tensor:
    """(N, C, H, W) -> (3, H', W') in [0, 1], tiles separated by `pad` pixels of white."""
    images = images.detach().float().cpu()
    n, c, h, w = images.shape
    if c not in (1, 3):
        images = images[:, :1]
        c = 1
    if normalize_each:
        flat = images.reshape(n, -1)
        lo = flat.min(dim=1).values.view(n, 1, 1, 1)
        hi = flat.max(dim=1).values.view(n, 1, 1, 1)
        images = (images - lo) / (hi - lo).clamp_min(1e-8)
    images = images.clamp(0, 1)
    if c == 1:
        images = images.expand(n, 3, h, w)
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    canvas = torch.ones(3, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, y:y + h, x:x + w] = images[i]
    return canvas


def confusion_image(confusion: torch.Tensor, cell: int = 16) -> torch.Tensor:
    """Row-normalised confusion matrix as a (3, H, W) heat map: white = 0, dark blue = whole row."""
    conf = confusion.double()
    rows = conf.sum(dim=1, keepdim=True).clamp_min(1)
    frac = (conf / rows).float()
    k = frac.shape[0]
    img = torch.ones(3, k, k)
    img[0] = 1 - frac
    img[1] = 1 - 0.8 * frac
    img[2] = 1 - 0.3 * frac
    return img.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
