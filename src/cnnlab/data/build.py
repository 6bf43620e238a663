"""From the data config to loaders: load the source, split it, choose the loader path."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cnnlab.config.data_schema import DataBase
from cnnlab.data.augment import BatchAugment, batched_unsupported, build_v2_pipeline
from cnnlab.data.balance import capped_indices, class_counts, per_class_caps
from cnnlab.data.bundle import DataBundle, DataInfo, augment_parts, check_pipeline, info_from
from cnnlab.data.imagefolder import ImageFiles, collate_skipping, find_classes
from cnnlab.data.loaders import DataLoaderAdapter, TensorLoader, TransformDataset
from cnnlab.data.mixing import BatchMix
from cnnlab.data.sources import Pool, SourceData, load_source
from cnnlab.data.splits import stratified_split
from cnnlab.data.train_stats import measure_mean_std, with_lighting_pca
from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)


def data_info(cfg) -> DataInfo:
    """DataInfo from a complete data config (a saved run's, where an image folder's classes are filled in)."""
    return info_from(cfg, {}, class_subset(cfg))


def discovered_classes(cfg) -> list[str] | None:
    """The class names only the files know, read without loading an image: an image folder's class folders, a
    shard set's manifest. None for a data set whose config states its classes."""
    if cfg.classes is not None or cfg.num_classes is not None:
        return None
    if cfg.name == "imagefolder":
        key = "data.train_root" if cfg.train_root else "data.root"
        return find_classes(Path(str(cfg.train_root or cfg.root)).expanduser(), key)
    if cfg.name == "webdataset":
        from cnnlab.data.stream_bundle import manifest_of  # webdataset is imported only where shards are read

        return list(manifest_of(cfg)[0].classes)
    return None


def class_subset(cfg, num_classes: int | None = None) -> list[int] | None:
    """data.class_subset: the original class indices to keep, in the order of their new labels 0..k-1."""
    subset = cfg.class_subset
    if subset is None:
        return None
    subset = [int(c) for c in subset]
    n = int(cfg.num_classes if num_classes is None else num_classes)
    if len(subset) < 2 or len(set(subset)) != len(subset) or not all(0 <= c < n for c in subset):
        raise ConfigError(f"data.class_subset={subset} must list at least two distinct class indices in [0, {n})")
    return subset


def build_data(cfg: DataBase, seed: int, device: torch.device, augment=None, train_augment: bool = True,
               shard: tuple[int, int] = (0, 1), cache_dirs=()) -> DataBundle:
    """Loaders for train (augmented, shuffled), val and test (never augmented) on `device`.

    `cfg`: the validated data section (cnnlab.config.typed: the data source's own model). `augment` is the
    augment section (transforms + mix) or a bare list of transforms. `shard`: (rank, world
    size) under distributed training: every loader yields only this process's share of each split
    (cnnlab.data.loaders.shard); `data.batch_size` is per process. `cache_dirs`: where values computed from
    the training split are looked for (Lighting's PCA, lighting_pca.json); the first is the run dir, where
    rank 0 writes what it computes; the others (a resumed run's dir) are only read.
    """
    if cfg.name == "webdataset":  # tar shards streamed: neither a resident pool nor a file list
        from cnnlab.data.stream_bundle import build_stream  # webdataset is imported only by a run that streams

        return build_stream(cfg, seed, device, augment, train_augment, shard)
    source = load_source(cfg)
    found = _found_values(cfg, source)
    full = info_from(cfg, found, subset=None)
    for pool in source.pools.values():
        _check_pool(full, pool)
    subset = class_subset(cfg, full.num_classes)
    pools = {name: _subset(pool, subset, full.num_classes) for name, pool in source.pools.items()}
    pools = {name: _resized(pool, full.input_size) for name, pool in pools.items()}
    pools = _split(pools, cfg, seed)
    k = len(subset) if subset is not None else full.num_classes
    caps = per_class_caps(cfg.max_per_class, k)
    if caps is not None:  # the training split only, after the split: val and test stay as they were
        pools["train"] = pools["train"].select(capped_indices(pools["train"].labels, caps, seed))
    counts = class_counts(pools["train"].labels, k)
    if caps is not None or cfg.sampler == "balanced":
        log.info("training images per class%s: %s", f" (data.max_per_class={_plain(cfg.max_per_class)})"
                 if caps is not None else "", counts)
    if cfg.mean is None or cfg.std is None:
        mean, std = measure_mean_std(pools["train"], source, full, seed)
        if cfg.mean is None:
            found["mean"] = mean
        if cfg.std is None:
            found["std"] = std
    info = info_from(cfg, found, subset)

    transforms, mix_cfg = augment_parts(augment)
    if not train_augment:
        transforms, mix_cfg = [], None
    mix = BatchMix.from_config(mix_cfg, info.num_classes)
    transforms = with_lighting_pca(transforms, pools["train"], source, info, seed, cache_dirs, write=shard[0] == 0)
    resident = all(pool.resident for pool in pools.values())
    kind = _choose_loader(str(cfg.loader), transforms, resident)
    check_pipeline(transforms, kind, pools["train"], source, info)
    common = dict(mean=info.mean, std=info.std, seed=seed, device=device, rank=shard[0], world=shard[1])
    bs, eval_bs = int(cfg.batch_size), int(cfg.eval_batch_size)
    workers = int(cfg.num_workers)
    sampler = str(cfg.sampler)
    if kind == "tensor":
        train = TensorLoader(pools["train"].images, pools["train"].labels, bs, shuffle=True, index=pools["train"].index,
                             augment=BatchAugment(transforms), mix=mix, sampler=sampler, **common)
    else:
        pipeline = build_v2_pipeline(transforms) if transforms else None
        train = _dataloader(pools["train"], source, info, pipeline, bs, True, workers, mix, common, sampler)
    # Evaluation sets are never augmented; resident ones always take the resident path.
    val, test = (TensorLoader(p.images, p.labels, eval_bs, index=p.index, **common) if p.resident
                 else _dataloader(p, source, info, None, eval_bs, False, workers, None, common)
                 for p in (pools["val"], pools["test"]))
    sizes = {name: len(pool) for name, pool in pools.items()}
    log.info("data %s: %d train / %d val / %d test images (%s), %s loader on %s%s%s", info.name, sizes["train"],
             sizes["val"], sizes["test"], "in memory" if resident else "decoded per sample", kind, device,
             f", each of {shard[1]} processes takes 1/{shard[1]} of every split" if shard[1] > 1 else "",
             f"; {source.skipped} unreadable files skipped" if source.skipped else "")
    return DataBundle(info, train, val, test, loader_kind=kind, sizes=sizes, found=found, skipped=source.skipped,
                      class_counts=counts)


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _found_values(cfg, source: SourceData) -> dict:
    """Values the files decide (an image folder's classes): checked against any the config states."""
    found = dict(source.found)
    for key, value in cfg.paths().items():  # saved absolute: eval may run elsewhere
        if not Path(value).expanduser().is_absolute():
            found[key] = str(Path(value).expanduser().resolve())
    classes = found.get("classes")
    if classes is not None:
        if cfg.classes is not None and [str(c) for c in cfg.classes] != list(classes):
            raise ConfigError(f"data.classes={list(cfg.classes)} but the class folders are {list(classes)}; "
                              f"set data.classes=null to take the folder names")
        if cfg.num_classes is not None and int(cfg.num_classes) != len(classes):
            raise ConfigError(f"data.num_classes={cfg.num_classes} but {len(classes)} class folders were found "
                              f"({', '.join(classes)}); set data.num_classes=null to take the folder count")
        found["num_classes"] = len(classes)
    return found


def _check_pool(info: DataInfo, pool: Pool) -> None:
    if pool.resident:
        _check_shapes(info, pool.images, pool.labels)


def _subset(pool: Pool, subset, num_classes: int) -> Pool:
    if subset is None:
        return pool
    relabel = torch.full((num_classes,), -1, dtype=torch.long)
    relabel[torch.tensor(subset)] = torch.arange(len(subset))
    new = relabel[pool.labels]
    keep = torch.nonzero(new >= 0).flatten()
    return pool.select(keep, new[keep])


def _resized(pool: Pool, size) -> Pool:
    return Pool(pool.labels, images=resize_to(pool.images, size), index=pool.index) if pool.resident else pool


def _split(pools: dict[str, Pool], cfg, seed: int) -> dict[str, Pool]:
    """train/val/test pools: a split the source lacks is carved from its training pool by the seeded fraction."""
    base = pools.get("all") or pools["train"]
    want_val = "val" not in pools
    want_test = "test" not in pools
    val_frac = float(cfg.split.val) if want_val else 0.0
    test_frac = float(cfg.split.test or 0.0) if want_test else 0.0
    if want_test and "all" not in pools and test_frac == 0:
        raise ConfigError(f"data.name={cfg.name} has no test split of its own: set data.split.test to the fraction "
                          f"of the training images to hold out")
    idx = stratified_split(base.labels, val_frac, test_frac, seed)
    out = {"train": base.select(idx["train"])}
    for name in ("val", "test"):
        out[name] = base.select(idx[name]) if name not in pools else pools[name]
    for name, pool in out.items():
        if len(pool) == 0:
            raise ConfigError(f"data.name={cfg.name}: the {name} split is empty; raise data.split.{name} or add images")
    return out


def _dataloader(pool: Pool, source: SourceData, info: DataInfo, pipeline, batch_size: int, shuffle: bool,
                workers: int, mix, common, sampler: str = "random"):
    if pool.resident:
        dataset = TransformDataset(pool.images, pool.labels, pipeline, seed=common["seed"], index=pool.index)
        collate = None
    else:
        dataset = ImageFiles(pool.files, pool.labels, info.in_channels, info.input_size, source.resize_mode,
                             skip=source.skip_unreadable, transform=pipeline, seed=common["seed"])
        collate = collate_skipping
    return DataLoaderAdapter(dataset, batch_size, shuffle=shuffle, num_workers=workers, mix=mix,
                             collate_fn=collate, sampler=sampler, **common)


def _choose_loader(requested: str, transforms, resident: bool = True) -> str:
    if not resident:
        if requested == "tensor":
            raise ConfigError("data.loader=tensor needs the whole set in memory, but this image folder is decoded per "
                              "sample (raise data.memory_limit_mb or set data.in_memory=true)")
        return "dataloader"
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


def resize_to(images: torch.Tensor, size: tuple[int, int], chunk: int = 1024) -> torch.Tensor:
    """Resize a resident uint8 set once, up front, to the model's input size (antialiased bilinear), a chunk of
    images at a time: the float copy the interpolation needs never covers the whole set."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], *size), dtype=torch.uint8, device=images.device)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].float()
        resized = F.interpolate(part, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = resized.round_().clamp_(0, 255)
    return out


def _check_shapes(info: DataInfo, images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != info.in_channels:
        raise ConfigError(f"data.in_channels={info.in_channels} but data set {info.name!r} has images of shape "
                          f"{tuple(images.shape[1:])}")
    if labels.numel() and int(labels.max()) >= info.num_classes:
        raise ConfigError(f"data.num_classes={info.num_classes} but data set {info.name!r} has label {int(labels.max())}")
