"""Batch-level MixUp and CutMix: each image is blended with (MixUp) or patched by (CutMix) its neighbour in the
batch, and the one-hot targets are mixed in the same proportion, so the loss gets soft targets that sum to one.

Both loader paths apply this to finished batches on the device, with the same code and the same per-epoch
random stream: the two paths cannot differ. As in torchvision's v2.MixUp/v2.CutMix, the partner of image i is
image i-1 (the batch rolled by one) and one mixing weight lambda ~ Beta(alpha, alpha) is drawn per batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F



class BatchMix:
    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5):
        # alphas >= 0 and probabilities in [0, 1]: checked with the config (cnnlab.config.data_schema.Mix)
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.rng = np.random.default_rng(0)

    @classmethod
    def from_config(cls, mix_cfg, num_classes: int) -> "BatchMix | None":
        """None when both alphas are 0 (the default): targets stay integer labels."""
        if not mix_cfg:
            return None
        mix = cls(num_classes, **{k: v for k, v in dict(mix_cfg).items()})
        return mix if mix.enabled else None

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def start_epoch(self, seed: int) -> None:
        """A fresh stream per (run seed, epoch), like every other random choice of the data path."""
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def choose(self, h: int, w: int) -> tuple[str, float, tuple[int, int, int, int] | None]:
        """('none'|'mixup'|'cutmix', the weight of the original image, the CutMix box (top, bottom, left, right))."""
        if self.rng.random() >= self.prob:
            return "none", 1.0, None
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or self.rng.random() < self.switch_prob)
        if not use_cutmix:
            return "mixup", float(self.rng.beta(self.mixup_alpha, self.mixup_alpha)), None
        lam = float(self.rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        # a box of area (1 - lam) * h * w centred anywhere, clipped to the image; lam is then the exact kept share
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(self.rng.integers(0, h)), int(self.rng.integers(0, w))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        return "cutmix", lam, (top, bottom, left, right)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kind, lam, box = self.choose(x.shape[-2], x.shape[-1])
        target = F.one_hot(y, self.num_classes).to(torch.float32) if y.ndim == 1 else y.float()
        if kind == "none":
            return x, target
        partner_x, partner_t = x.roll(1, 0), target.roll(1, 0)
        if kind == "mixup":
            x = x * lam + partner_x * (1.0 - lam)
        else:
            top, bottom, left, right = box
            x = x.clone()
            x[..., top:bottom, left:right] = partner_x[..., top:bottom, left:right]
        return x, target * lam + partner_t * (1.0 - lam)
