"""What building the data hands a run (DataInfo, DataBundle), and the steps every way of building it shares:
the info from the config and the files, the augment config's parts, one trial of the training pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cnnlab.config.data_schema import Augment
from cnnlab.data.augment import BatchAugment, build_v2_pipeline
from cnnlab.data.imagefolder import UnreadableImage, read_image
from cnnlab.data.sources import Pool, SourceData
from cnnlab.errors import ConfigError


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
    found: dict = field(default_factory=dict)   # values taken from the files (classes, measured mean/std)
    skipped: int = 0                            # unreadable files skipped while loading
    class_counts: list = field(default_factory=list)  # training images per class (whole split, every process)

    def split(self, name: str):
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split={name!r} is not a split; choose train, val or test")
        return getattr(self, name)


def augment_parts(augment):
    """(transforms, mix config) from the augment section (typed, or a config mapping), or from a bare list of
    transforms."""
    if augment is None:
        return [], None
    if isinstance(augment, Augment):
        return list(augment.transforms), augment.mix
    if hasattr(augment, "get") and not isinstance(augment, (list, tuple)) and "transforms" in augment:
        return list(augment.get("transforms") or []), augment.get("mix")
    return list(augment), None


def info_from(cfg, found: dict, subset) -> DataInfo:
    """DataInfo from the data config and the values the files gave (`found`), for a class subset or all."""
    names = found.get("classes") or cfg.classes
    classes = tuple(str(c) for c in names) if names is not None else tuple(str(i) for i in range(int(cfg.num_classes)))
    if subset is not None:
        classes = tuple(classes[i] for i in subset)
    mean, std = found.get("mean", cfg.mean), found.get("std", cfg.std)
    return DataInfo(name=cfg.name, in_channels=int(cfg.in_channels), num_classes=len(classes),
                    input_size=tuple(int(v) for v in cfg.input_size), classes=classes,
                    mean=tuple(float(v) for v in mean) if mean is not None else (),
                    std=tuple(float(v) for v in std) if std is not None else ())


def check_pipeline(transforms, kind: str, pool: Pool, source: SourceData, info: DataInfo) -> None:
    """Run the training pipeline once on two images, so a bad transform fails now, not mid-epoch."""
    if not transforms:
        return
    if pool.resident:
        sample = pool.rows(range(min(2, len(pool))))
    else:
        sample = None
        for path in pool.files[:50]:  # the first readable file (unreadable ones are the loader's business)
            try:
                sample = read_image(path, info.in_channels, info.input_size, source.resize_mode)[None]
                break
            except UnreadableImage:
                continue
        if sample is None:
            raise ConfigError(f"data: none of the first {min(50, len(pool.files))} training images can be read "
                              f"(e.g. {pool.files[0]})")
    try:
        if kind == "tensor":
            out = BatchAugment(transforms)(sample.float(), torch.Generator().manual_seed(0))
        else:
            pipeline = build_v2_pipeline(transforms)
            out = torch.stack([pipeline(img) for img in sample])
    except ConfigError:
        raise
    except Exception as bad:  # torchvision's own argument/size errors: name them as augmentation errors
        raise ConfigError(f"augment.transforms fail on a {tuple(sample.shape[1:])} training image: {bad}") from None
    if tuple(out.shape[1:]) != (info.in_channels, *info.input_size):
        raise ConfigError(f"augment.transforms turn a {tuple(sample.shape[1:])} image into {tuple(out.shape[1:])}, "
                          f"but the model takes {(info.in_channels, *info.input_size)} (data.in_channels, "
                          f"data.input_size): size-changing transforms must produce data.input_size")
