"""From the data config to loaders: load the source, split it, choose the loader path."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from cnnlab.data.augment import BatchAugment, batched_unsupported, build_v2_pipeline
from cnnlab.data.loaders import DataLoaderAdapter, TensorLoader, TransformDataset
from cnnlab.data.sources import load_source
from cnnlab.data.splits import stratified_split
from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)

LOADERS = ("auto", "tensor", "dataloader")


@dataclass(frozen=True)
class DataInfo:
    """What the model needs to know about the data to size itself."""

    name: str
    in_channels: int
    num_classes: int
    input_size: tuple[int, int]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class DataBundle:
    info: DataInfo
    train: object
    val: object
    test: object
    loader_kind: str = "tensor"
    sizes: dict = field(default_factory=dict)

    def split(self, name: str):
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split={name!r} is not a split; choose train, val or test")
        return getattr(self, name)


def data_info(cfg) -> DataInfo:
    classes = tuple(str(c) for c in cfg.classes)
    subset = class_subset(cfg)
    if subset is not None:
        classes = tuple(classes[i] for i in subset)
    return DataInfo(name=cfg.name, in_channels=int(cfg.in_channels), num_classes=len(classes),
                    input_size=tuple(int(v) for v in cfg.input_size), classes=classes,
                    mean=tuple(float(v) for v in cfg.mean), std=tuple(float(v) for v in cfg.std))


def data_info_full(cfg) -> DataInfo:
    """The source's own class list, before any class_subset."""
    return DataInfo(name=cfg.name, in_channels=int(cfg.in_channels), num_classes=int(cfg.num_classes),
                    input_size=tuple(int(v) for v in cfg.input_size), classes=tuple(str(c) for c in cfg.classes),
                    mean=tuple(float(v) for v in cfg.mean), std=tuple(float(v) for v in cfg.std))


def class_subset(cfg) -> list[int] | None:
    """data.class_subset: the original class indices to keep, in the order of their new labels 0..k-1."""
    subset = cfg.get("class_subset")
    if subset is None:
        return None
    subset = [int(c) for c in subset]
    n = int(cfg.num_classes)
    if len(subset) < 2 or len(set(subset)) != len(subset) or not all(0 <= c < n for c in subset):
        raise ConfigError(f"data.class_subset={subset} must list at least two distinct class indices in [0, {n})")
    return subset


def select_classes(images: torch.Tensor, labels: torch.Tensor, subset: list[int], num_classes: int):
    """Keep only the subset's classes, relabelled 0..k-1 in the subset's order."""
    relabel = torch.full((num_classes,), -1, dtype=torch.long)
    relabel[torch.tensor(subset)] = torch.arange(len(subset))
    new = relabel[labels]
    keep = new >= 0
    return images[keep], new[keep]


def build_data(cfg, seed: int, device: torch.device, augment_transforms=(), train_augment: bool = True) -> DataBundle:
    """Loaders for train (augmented, shuffled), val and test (never augmented) on `device`."""
    info = data_info(cfg)
    images, labels = load_source(cfg)
    _check_shapes(data_info_full(cfg), images, labels)
    subset = class_subset(cfg)
    if subset is not None:
        images, labels = select_classes(images, labels, subset, int(cfg.num_classes))
    images = resize_to(images, info.input_size)
    idx = stratified_split(labels, float(cfg.split.val), float(cfg.split.test), seed)

    transforms = list(augment_transforms) if train_augment else []
    kind = _choose_loader(str(cfg.loader), transforms)
    common = dict(mean=info.mean, std=info.std, seed=seed, device=device)
    eval_bs = int(cfg.eval_batch_size)
    if kind == "tensor":
        augment = BatchAugment(transforms)
        train = TensorLoader(images[idx["train"]], labels[idx["train"]], int(cfg.batch_size), shuffle=True,
                             augment=augment, **common)
    else:
        pipeline = build_v2_pipeline(transforms) if transforms else None
        train = DataLoaderAdapter(TransformDataset(images[idx["train"]], labels[idx["train"]], pipeline),
                                  int(cfg.batch_size), shuffle=True, num_workers=int(cfg.num_workers), **common)
    # Evaluation sets are small and never augmented: the resident path is always right for them.
    val = TensorLoader(images[idx["val"]], labels[idx["val"]], eval_bs, **common)
    test = TensorLoader(images[idx["test"]], labels[idx["test"]], eval_bs, **common)
    sizes = {name: int(len(i)) for name, i in idx.items()}
    log.info("data %s: %d train / %d val / %d test images, %s loader on %s", info.name, sizes["train"],
             sizes["val"], sizes["test"], kind, device)
    return DataBundle(info, train, val, test, loader_kind=kind, sizes=sizes)


def _choose_loader(requested: str, transforms) -> str:
    if requested not in LOADERS:
        raise ConfigError(f"data.loader={requested!r} is not accepted; choose one of {', '.join(LOADERS)}")
    unsupported = batched_unsupported(transforms)
    if requested == "tensor" and unsupported:
        raise ConfigError(f"data.loader=tensor cannot run these augmentations as batched tensor ops: "
                          f"{', '.join(unsupported)}; use data.loader=dataloader or auto")
    if requested == "auto":
        if unsupported:
            log.info("augmentations %s need per-sample transforms: using the DataLoader path", ", ".join(unsupported))
            return "dataloader"
        return "tensor"
    return requested


def resize_to(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a resident uint8 set once, up front, to the model's input size (antialiased bilinear)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    import torch.nn.functional as F

    resized = F.interpolate(images.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def _check_shapes(info: DataInfo, images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != info.in_channels:
        raise ConfigError(f"data.in_channels={info.in_channels} but data set {info.name!r} has images of shape "
                          f"{tuple(images.shape[1:])}")
    if labels.numel() and int(labels.max()) >= info.num_classes:
        raise ConfigError(f"data.num_classes={info.num_classes} but data set {info.name!r} has label {int(labels.max())}")
