"""From the data config to loaders: load the source, split it, choose the loader path."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cnnlab.data.augment import BatchAugment, batched_unsupported, build_v2_pipeline
from cnnlab.data.balance import capped_indices, class_counts, per_class_caps
from cnnlab.data.imagefolder import ImageFiles, UnreadableImage, collate_skipping, find_classes, read_image
from cnnlab.data.loaders import DataLoaderAdapter, TensorLoader, TransformDataset
from cnnlab.data.mixing import BatchMix
from cnnlab.data.sources import Pool, SourceData, load_source
from cnnlab.data.splits import stratified_split
from cnnlab.data.transforms import lighting
from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)



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


def data_info(cfg) -> DataInfo:
    """DataInfo from a complete data config (a saved run's, where an image folder's classes are filled in)."""
    return info_from(cfg, {}, class_subset(cfg))


def discovered_classes(cfg) -> list[str] | None:
    """The class names only the files know, read without loading an image: an image folder's class folders, a
    shard set's manifest. None for a data set whose config states its classes."""
    if cfg.get("classes") is not None or cfg.get("num_classes") is not None:
        return None
    if cfg.name == "imagefolder":
        key = "data.train_root" if cfg.get("train_root") else "data.root"
        return find_classes(Path(str(cfg.get("train_root") or cfg.root)).expanduser(), key)
    if cfg.name == "webdataset":
        from cnnlab.data.stream import manifest_of  # webdataset is imported only where shards are read

        return list(manifest_of(cfg)[0].classes)
    return None


def class_subset(cfg, num_classes: int | None = None) -> list[int] | None:
    """data.class_subset: the original class indices to keep, in the order of their new labels 0..k-1."""
    subset = cfg.get("class_subset")
    if subset is None:
        return None
    subset = [int(c) for c in subset]
    n = int(cfg.num_classes if num_classes is None else num_classes)
    if len(subset) < 2 or len(set(subset)) != len(subset) or not all(0 <= c < n for c in subset):
        raise ConfigError(f"data.class_subset={subset} must list at least two distinct class indices in [0, {n})")
    return subset


def build_data(cfg, seed: int, device: torch.device, augment=None, train_augment: bool = True,
               shard: tuple[int, int] = (0, 1), cache_dirs=()) -> DataBundle:
    """Loaders for train (augmented, shuffled), val and test (never augmented) on `device`.

    `augment` is the augment config (transforms + mix) or a bare list of transforms. `shard`: (rank, world
    size) under distributed training: every loader yields only this process's share of each split
    (cnnlab.data.loaders.shard); `data.batch_size` is per process. `cache_dirs`: where values computed from
    the training split are looked for (Lighting's PCA, lighting_pca.json); the first is the run dir, where
    rank 0 writes what it computes; the others (a resumed run's dir) are only read.
    """
    if cfg.name == "webdataset":  # tar shards streamed: neither a resident pool nor a file list
        from cnnlab.data.stream import build_stream  # webdataset is imported only by a run that streams

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
    caps = per_class_caps(cfg.get("max_per_class"), k)
    if caps is not None:  # the training split only, after the split: val and test stay as they were
        pools["train"] = pools["train"].select(capped_indices(pools["train"].labels, caps, seed))
    counts = class_counts(pools["train"].labels, k)
    if caps is not None or cfg.get("sampler", "random") == "balanced":
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
    transforms = _with_lighting_pca(transforms, pools["train"], source, info, seed, cache_dirs, write=shard[0] == 0)
    resident = all(pool.resident for pool in pools.values())
    kind = _choose_loader(str(cfg.loader), transforms, resident)
    check_pipeline(transforms, kind, pools["train"], source, info)
    common = dict(mean=info.mean, std=info.std, seed=seed, device=device, rank=shard[0], world=shard[1])
    bs, eval_bs = int(cfg.batch_size), int(cfg.eval_batch_size)
    workers = int(cfg.num_workers)
    sampler = str(cfg.get("sampler", "random"))
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


def augment_parts(augment):
    """(transforms, mix config) from the augment config, or from a bare list of transforms."""
    if augment is None:
        return [], None
    if hasattr(augment, "get") and not isinstance(augment, (list, tuple)) and "transforms" in augment:
        return list(augment.get("transforms") or []), augment.get("mix")
    return list(augment), None


def _found_values(cfg, source: SourceData) -> dict:
    """Values the files decide (an image folder's classes): checked against any the config states."""
    found = dict(source.found)
    for key in ("root", "train_root", "val_root", "test_root"):  # saved absolute: eval may run elsewhere
        value = cfg.get(key)
        if value and not Path(str(value)).expanduser().is_absolute():
            found[key] = str(Path(str(value)).expanduser().resolve())
    classes = found.get("classes")
    if classes is not None:
        if cfg.get("classes") is not None and [str(c) for c in cfg.classes] != list(classes):
            raise ConfigError(f"data.classes={list(cfg.classes)} but the class folders are {list(classes)}; "
                              f"set data.classes=null to take the folder names")
        if cfg.get("num_classes") is not None and int(cfg.num_classes) != len(classes):
            raise ConfigError(f"data.num_classes={cfg.num_classes} but {len(classes)} class folders were found "
                              f"({', '.join(classes)}); set data.num_classes=null to take the folder count")
        found["num_classes"] = len(classes)
    return found


def info_from(cfg, found: dict, subset) -> DataInfo:
    """DataInfo from the data config and the values the files gave (`found`), for a class subset or all."""
    names = found.get("classes") or cfg.get("classes")
    classes = tuple(str(c) for c in names) if names is not None else tuple(str(i) for i in range(int(cfg.num_classes)))
    if subset is not None:
        classes = tuple(classes[i] for i in subset)
    mean, std = found.get("mean", cfg.mean), found.get("std", cfg.std)
    return DataInfo(name=cfg.name, in_channels=int(cfg.in_channels), num_classes=len(classes),
                    input_size=tuple(int(v) for v in cfg.input_size), classes=classes,
                    mean=tuple(float(v) for v in mean) if mean is not None else (),
                    std=tuple(float(v) for v in std) if std is not None else ())


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
    test_frac = float(cfg.split.get("test") or 0.0) if want_test else 0.0
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


def measure_mean_std(pool: Pool, source: SourceData, info: DataInfo, seed: int, limit: int = 2000):
    """Per-channel mean and std of the training images (at most `limit` of them, drawn with the seed),
    accumulated in chunks so a large input size does not need all of them in memory at once."""
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
    total = torch.zeros(info.in_channels, dtype=torch.float64)
    squares = torch.zeros(info.in_channels, dtype=torch.float64)
    count = 0
    for x in _image_chunks(pool, source, info, pick):
        x = x.to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ConfigError("data: no readable training image to measure data.mean / data.std from")
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-6).sqrt()
    mean, std = [round(v, 4) for v in mean.tolist()], [round(max(v, 1e-3), 4) for v in std.tolist()]
    log.info("data.mean=%s data.std=%s measured on %d training images", mean, std, len(pick))
    return mean, std


def _image_chunks(pool: Pool, source: SourceData, info: DataInfo, pick: list[int], size: int = 128):
    """The uint8 images at `pick`, `size` at a time (files decoded; unreadable ones left out)."""
    files = None
    if not pool.resident:
        files = ImageFiles(pool.files, pool.labels, info.in_channels, info.input_size, source.resize_mode, skip=True)
    for start in range(0, len(pick), size):
        chunk = pick[start:start + size]
        if files is None:
            yield pool.rows(chunk)
            continue
        kept = [item[0] for item in (files[i] for i in chunk) if item is not None]
        if kept:
            yield torch.stack(kept)


def _with_lighting_pca(transforms: list, pool: Pool, source: SourceData, info: DataInfo, seed: int, cache_dirs,
                       write: bool, limit: int = 2000) -> list:
    """The transforms with every Lighting entry that leaves eigval/eigvec null given the training split's RGB
    PCA: read from lighting_pca.json in `cache_dirs` when it was computed for this very training split, else
    computed (every resident training image; up to `limit` decoded ones drawn with the seed) and written to
    the first of `cache_dirs` (when `write`: rank 0)."""
    wanted = [i for i, e in enumerate(transforms) if hasattr(e, "get") and e.get("_target_") == lighting.TARGET
              and (e.get("eigval") is None or e.get("eigvec") is None)]
    if not wanted:
        return transforms
    if info.in_channels != 3:
        raise ConfigError(f"augment.transforms[{wanted[0]}]._target_={lighting.TARGET}: AlexNet's PCA lighting "
                          f"needs RGB images, but data.in_channels={info.in_channels}; remove it from the pipeline")
    fingerprint = _training_fingerprint(pool, info)
    files = [Path(d) / lighting.PCA_FILE for d in cache_dirs]
    pca = lighting.cached_pca(files, fingerprint)
    if pca is not None:
        log.info("augment: Lighting reuses the training split's RGB PCA from %s: eigval %s", pca["path"],
                 [round(v, 5) for v in pca["eigval"]])
    else:
        pick = list(range(len(pool))) if pool.resident else \
            torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
        eigval, eigvec = lighting.rgb_pca(_image_chunks(pool, source, info, pick, size=512))
        pca = {"eigval": eigval, "eigvec": eigvec}
        where = ""
        if files and write:
            lighting.save_pca(files[0], eigval, eigvec, fingerprint)
            where = f", saved in {files[0]}"
        log.info("augment: Lighting's RGB PCA of %d training images: eigval %s%s", len(pick),
                 [round(v, 5) for v in eigval], where)
    out = list(transforms)
    for i in wanted:
        entry = out[i]
        entry = OmegaConf.to_container(entry, resolve=True) if OmegaConf.is_config(entry) else dict(entry)
        out[i] = {**entry, "eigval": pca["eigval"], "eigvec": pca["eigvec"]}
    return out


def _training_fingerprint(pool: Pool, info: DataInfo) -> dict:
    """What identifies a training split for a cached PCA: its size and a digest of its labels and of a few of
    its images (or its file paths)."""
    digest = hashlib.sha256(pool.labels.cpu().numpy().tobytes())
    if pool.resident:
        digest.update(pool.rows(range(0, len(pool), max(1, len(pool) // 16))[:16]).cpu().contiguous().numpy().tobytes())
    else:
        digest.update("\n".join(str(f) for f in pool.files).encode())
    return {"data": info.name, "images": len(pool), "input_size": list(info.input_size),
            "digest": digest.hexdigest()[:20]}


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
