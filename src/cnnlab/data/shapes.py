"""`shapes`: a procedurally generated RGB data set of coloured geometric shapes on noisy backgrounds.

Every image draws one of eight shapes at a random position, size, rotation and colour on a random
background colour with Gaussian pixel noise, rendered at 2x and averaged down for anti-aliased edges.
A CNN has to learn shape, not colour or position, to classify it. The set is a pure function of its
seed and size, so it needs no download and is identical on every machine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CLASSES = ("circle", "ring", "square", "star", "triangle", "cross", "ellipse", "semicircle")


def _masks(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Inside-masks for a batch: u, v are rotated coordinates relative to the centre, r the size.

    No two classes may be rotations of each other (a diamond is a rotated square), since every shape is
    drawn at a random angle."""
    dist = torch.sqrt(u * u + v * v)
    shapes = [
        dist < r,                                                           # circle
        (dist < r) & (dist > 0.55 * r),                                     # ring
        torch.maximum(u.abs(), v.abs()) < 0.8 * r,                          # square
        dist < r * (0.6 + 0.4 * torch.cos(5 * torch.atan2(v, u))),           # five-pointed star
        (v > -0.5 * r) & (math.sqrt(3) * u + v < r) & (-math.sqrt(3) * u + v < r),  # triangle
        ((u.abs() < 0.3 * r) & (v.abs() < r)) | ((v.abs() < 0.3 * r) & (u.abs() < r)),  # cross
        (u / r) ** 2 + (v / (0.5 * r)) ** 2 < 1,                             # ellipse
        (dist < r) & (v > 0),                                               # semicircle
    ]
    stacked = torch.stack(shapes)  # (classes, N, H, W)
    return stacked.gather(0, kind.view(1, -1, 1, 1).expand(1, *u.shape)).squeeze(0)


def generate(num_samples: int, image_size: int = 32, seed: int = 0, noise: float = 0.1, chunk: int = 1000):
    """uint8 images (N, 3, S, S) and int64 labels (balanced classes), deterministic from (seed, size)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_samples) % len(CLASSES)
    labels = labels[torch.randperm(num_samples, generator=g)]
    hi = 2 * image_size  # supersampled canvas
    axis = (torch.arange(hi, dtype=torch.float32) + 0.5) / hi  # pixel centres in [0, 1]
    images = []
    for start in range(0, num_samples, chunk):
        kind = labels[start:start + chunk]
        n = len(kind)
        size = 0.24 + 0.14 * torch.rand(n, generator=g)                 # radius as a fraction of the image
        cx = size + (1 - 2 * size) * torch.rand(n, generator=g)          # keep the shape inside the frame
        cy = size + (1 - 2 * size) * torch.rand(n, generator=g)
        angle = 2 * math.pi * torch.rand(n, generator=g)
        dx = axis.view(1, 1, -1) - cx.view(-1, 1, 1)
        dy = axis.view(1, -1, 1) - cy.view(-1, 1, 1)
        cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        inside = _masks(kind, u, v, size.view(-1, 1, 1)).float()
        background = torch.rand(n, 3, generator=g)
        # Foreground colour at least 0.4 away from the background in mean brightness: always visible.
        foreground = torch.rand(n, 3, generator=g)
        too_close = (foreground.mean(1) - background.mean(1)).abs() < 0.4
        foreground[too_close] = 1.0 - background[too_close]
        canvas = background.view(n, 3, 1, 1) + (foreground - background).view(n, 3, 1, 1) * inside.unsqueeze(1)
        canvas = F.avg_pool2d(canvas, 2)  # anti-aliasing: 2x2 supersamples per pixel
        canvas = canvas + noise * torch.randn(canvas.shape, generator=g)
        images.append((canvas.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(images), labels
