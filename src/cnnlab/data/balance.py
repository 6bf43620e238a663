"""Class imbalance on the data side: per-class counts, capping each class's training images
(data.max_per_class) and the balanced epoch order (data.sampler=balanced)."""

from __future__ import annotations

import torch

from cnnlab.errors import ConfigError
from cnnlab.engine.seeding import derived_generator

CAP_SALT = 0x636170  # keeps the choice of kept images apart from every other seeded stream


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Images per class, classes 0..num_classes-1."""
    return torch.bincount(labels.cpu(), minlength=num_classes)[:num_classes].tolist()


def per_class_caps(spec, num_classes: int) -> list[int] | None:
    """data.max_per_class (null, N, or one N per class) -> one cap per class, or None."""
    if spec is None:
        return None
    if isinstance(spec, int):
        return [int(spec)] * num_classes
    caps = [int(n) for n in spec]
    if len(caps) != num_classes:
        raise ConfigError(f"data.max_per_class has {len(caps)} values but the data has num_classes={num_classes} "
                          f"(after data.class_subset): give one number, or one per class")
    return caps


def capped_indices(labels: torch.Tensor, caps: list[int], seed: int) -> torch.Tensor:
    """Indices of at most caps[c] images of each class c, chosen with the seed, in their original order.

    A class's choice depends only on the seed, the cap and that class's images: raising a cap keeps the
    images a lower cap chose and adds others (each class takes a prefix of one seeded permutation)."""
    keep = []
    for cls, cap in enumerate(caps):
        idx = torch.nonzero(labels == cls).flatten()
        if len(idx) > cap:
            order = torch.randperm(len(idx), generator=derived_generator(seed, CAP_SALT, cls))
            idx = idx[order[:cap]]
        keep.append(idx)
    return torch.cat(keep).sort().values


# torch.multinomial takes at most 2^24 categories: a larger training set draws by inverse CDF instead (below that
# multinomial stays, so that the orders of existing runs, and their mid-epoch resumes, are unchanged).
MULTINOMIAL_MAX_CATEGORIES = 2 ** 24


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights 1 / (images of its class): sampled in proportion, every class is drawn equally often."""
    counts = torch.bincount(labels)
    return 1.0 / counts[labels].to(torch.float32)


def epoch_order(n: int, generator: torch.Generator, device, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """An epoch's sample order: a permutation of 0..n-1, or (balanced) n draws with replacement in proportion
    to `sample_weights`. It depends only on the generator, which the loaders seed from (seed, epoch): the same
    on every process before sharding, and again when an interrupted epoch is resumed."""
    if sample_weights is None:
        return torch.randperm(n, generator=generator, device=device)
    if len(sample_weights) > MULTINOMIAL_MAX_CATEGORIES:
        return draws_by_inverse_cdf(sample_weights.to(device), n, generator)
    return torch.multinomial(sample_weights.to(device), n, replacement=True, generator=generator)


def draws_by_inverse_cdf(weights: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws with replacement in proportion to `weights`, for any number of them: uniform numbers looked up in
    the cumulative weights (float64, so that 2^24 and more small weights still add up exactly enough)."""
    cumulative = weights.to(torch.float64).cumsum(0)
    u = torch.rand(n, generator=generator, device=weights.device, dtype=torch.float64) * cumulative[-1]
    return torch.searchsorted(cumulative, u, right=True).clamp_(max=len(weights) - 1)
