"""The most confidently wrong test images: the mistakes the model was surest of, often mislabelled images
or classes that look alike. Kept as a running top-k during one pass over the test split, so the whole split
never has to be held in memory."""

from __future__ import annotations

import torch

from cnnlab.visualize.figures import columns_for, panel_grid, show_image


class ConfidentMistakes:
    """The k wrong predictions with the highest probability on the predicted class, fed batch by batch."""

    def __init__(self, k: int):
        self.k = k
        self.images = torch.empty(0)
        self.true = torch.empty(0, dtype=torch.long)
        self.predicted = torch.empty(0, dtype=torch.long)
        self.confidence = torch.empty(0)
        self.wrong = 0

    def update(self, inputs: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor) -> None:
        confidence, predicted = probs.max(dim=1)
        wrong = predicted != labels
        self.wrong += int(wrong.sum())
        if not wrong.any():
            return
        keep = wrong.nonzero().flatten()
        if self.images.numel() == 0:
            self.images = inputs[:0].detach().cpu()
        images = torch.cat([self.images, inputs[keep].detach().cpu()])
        true = torch.cat([self.true, labels[keep].cpu()])
        pred = torch.cat([self.predicted, predicted[keep].cpu()])
        conf = torch.cat([self.confidence, confidence[keep].float().cpu()])
        top = conf.argsort(descending=True)[:self.k]
        self.images, self.true, self.predicted, self.confidence = images[top], true[top], pred[top], conf[top]


def mistakes_figure(images: torch.Tensor, true: list[str], predicted: list[str], confidence: list[float],
                    wrong: int, total: int):
    """images: (N, C, H, W) in [0, 1], most confident first."""
    n = images.shape[0]
    if n == 0:
        fig, axes = panel_grid(1, 1, f"the most confidently wrong of {total} test images")
        axes[0, 0].text(0.5, 0.5, "none: every test image is classified correctly", ha="center", va="center")
        return fig
    title = f"the {n} most confidently wrong of {total} test images ({wrong} wrong)\ntrue / predicted (probability)"
    cols = columns_for(n, 8)
    fig, axes = panel_grid(-(-n // cols), cols, title, panel=1.3, title_room=0.8)
    for i in range(n):
        show_image(axes.flat[i], images[i])
        axes.flat[i].set_title(f"{true[i]} / {predicted[i]} ({confidence[i]:.2f})", fontsize=8, color="red")
    return fig
