"""build_data's branch for data=webdataset: the manifest and each split's shard list from the config, checked,
and the stream loaders."""

from __future__ import annotations

import logging
import os

import torch

from cnnlab.data.mixing import BatchMix
from cnnlab.data.shardset import Shard
from cnnlab.data.stream import ShardStream, StreamError, StreamLoader, WorkerPlan, per_process
from cnnlab.errors import ConfigError

log = logging.getLogger("cnnlab.data.stream")  # the stream's logger, as its messages were named


def build_stream(cfg, seed: int, device: torch.device, augment, train_augment: bool, shard: tuple[int, int]):
    """build_data for data=webdataset: the manifest gives classes, sizes and mean/std; the shards stream."""
    from cnnlab.data import bundle  # the parts every way of building the data shares
    from cnnlab.data.augment import build_v2_pipeline
    from cnnlab.data.sources import Pool
    from cnnlab.data.transforms import lighting

    _refuse_unsupported(cfg)
    manifest, shards = _shard_sets(cfg)
    found = {"classes": list(manifest.classes), "num_classes": len(manifest.classes)}
    _check_classes(cfg, manifest)
    for key, value in cfg.paths().items():  # saved absolute: eval may run elsewhere
        if is_local_relative(value):
            found[key] = os.path.abspath(os.path.expanduser(value))
    channels = int(cfg.in_channels)
    stats = manifest.stats_for(channels) or {}
    for key, value in (("mean", cfg.mean), ("std", cfg.std)):
        if value is None:
            if key not in stats:
                raise ConfigError(f"data.{key}=null and the manifest {manifest.where} gives no {key} for "
                                  f"{channels}-channel images; set data.mean and data.std")
            found[key] = [float(v) for v in stats[key]]
    info = bundle.info_from(cfg, found, subset=None)
    rank, world = shard
    workers = int(cfg.num_workers)
    _check_shard_counts(shards["train"], world, workers)

    transforms, mix_cfg = bundle.augment_parts(augment) if train_augment else ([], None)
    if any(hasattr(e, "get") and e.get("_target_") == lighting.TARGET and
           (e.get("eigval") is None or e.get("eigvec") is None) for e in transforms):
        raise ConfigError(f"{lighting.TARGET} needs eigval and eigvec with data=webdataset (the stream has no "
                          f"training split in memory to compute them from); give both in augment.transforms")
    mix = BatchMix.from_config(mix_cfg, info.num_classes)
    pipeline = build_v2_pipeline(transforms) if transforms else None
    stream = dict(channels=channels, size=info.input_size, resize_mode=str(cfg.resize_mode),
                  num_classes=info.num_classes, seed=seed)
    if transforms:  # a bad transform fails now, on the first training sample, not mid-epoch
        first = _first_sample(shards["train"][0], ShardStream(**stream))
        bundle.check_pipeline(transforms, "dataloader", Pool(first[1], images=first[0][None]), None, info)
    common = dict(mean=info.mean, std=info.std, seed=seed, device=device, num_workers=workers, rank=rank, world=world)
    train = StreamLoader(shards["train"], ShardStream(**stream, transform=pipeline, buffer=int(cfg.shuffle_buffer)),
                         int(cfg.batch_size), train=True, mix=mix, **common)
    val, test = (StreamLoader(shards[name], ShardStream(**stream), int(cfg.eval_batch_size), train=False, **common)
                 for name in ("val", "test"))
    sizes = {name: sum(s.samples for s in shards[name]) for name in shards}
    counts = [0] * info.num_classes
    for s in shards["train"]:
        for c, n in enumerate(_class_counts(manifest, s)):
            counts[c] += n
    log.info("data %s: %d train / %d val / %d test images in %d / %d / %d shards (manifest %s), streamed by %d "
             "worker(s) on %s%s", info.name, sizes["train"], sizes["val"], sizes["test"], len(shards["train"]),
             len(shards["val"]), len(shards["test"]), manifest.where, workers, device,
             f", each of {world} processes takes {per_process(sizes['train'], world)} training images per epoch"
             if world > 1 else "")
    return bundle.DataBundle(info, train, val, test, loader_kind="stream", sizes=sizes, found=found,
                            class_counts=counts)


def _check_classes(cfg, manifest) -> None:
    """data.classes / data.num_classes, when given, must be the manifest's."""
    classes = list(manifest.classes)
    if cfg.classes is not None and [str(c) for c in cfg.classes] != classes:
        raise ConfigError(f"data.classes={list(cfg.classes)} but the manifest {manifest.where} lists the classes "
                          f"{classes}; set data.classes=null to take the manifest's")
    if cfg.num_classes is not None and int(cfg.num_classes) != len(classes):
        raise ConfigError(f"data.num_classes={cfg.num_classes} but the manifest {manifest.where} lists "
                          f"{len(classes)} classes ({', '.join(classes)}); set data.num_classes=null to take the "
                          f"manifest's count")


def is_local_relative(value: str) -> bool:
    from cnnlab.data.shardset import is_local

    return is_local(value) and not value.startswith("file:") and not os.path.isabs(os.path.expanduser(value))


def _refuse_unsupported(cfg) -> None:
    for key, bad, why in (("class_subset", cfg.class_subset is not None, "null"),
                          ("max_per_class", cfg.max_per_class is not None, "null"),
                          ("sampler", cfg.sampler != "random", "random"),
                          ("loader", str(cfg.loader) not in ("auto", "dataloader"), "auto")):
        if bad:
            raise ConfigError(f"data.{key}={getattr(cfg, key)} is not available with data=webdataset (a stream is read "
                              f"shard by shard, never indexed); use data.{key}={why}, or write the shards you "
                              f"want with cnnlab-shards")


def manifest_of(cfg):
    """(the manifest, where it was read) of data.manifest, or the one beside the first training shard."""
    from cnnlab.data.shardset import default_manifest, expand, load_manifest

    manifest_url = cfg.manifest
    if not manifest_url:
        manifest_url = default_manifest(expand(str(cfg.train_shards), "data.train_shards")[0])
        if manifest_url is None:
            raise ConfigError("data.train_shards is a pipe: command, so the manifest cannot be found beside the "
                              "shards: set data.manifest to its path or URL (e.g. pipe:aws s3 cp s3://bucket/"
                              "shards/cnnlab-shards.json -)")
    return load_manifest(str(manifest_url), "data.manifest"), str(manifest_url)


def _shard_sets(cfg):
    """The manifest and the shards of each split, every name checked against the manifest."""
    from cnnlab.data.shardset import shard_list, sibling_pattern

    train_pattern = str(cfg.train_shards)
    manifest, manifest_url = manifest_of(cfg)
    shards = {"train": shard_list(train_pattern, manifest, "data.train_shards")}
    for split in ("val", "test"):
        key, pattern = f"data.{split}_shards", getattr(cfg, f"{split}_shards")
        if not pattern:
            pattern = sibling_pattern(str(manifest_url), split, manifest)
            if pattern is None:
                raise ConfigError(f"{key}=null and the manifest {manifest.where} lists no {split} shards: write "
                                  f"them with cnnlab-shards --{split}-fraction, or name them in {key}")
        shards[split] = shard_list(str(pattern), manifest, key)
    return manifest, shards


def _check_shard_counts(shards: list[Shard], world: int, workers: int) -> None:
    if len(shards) < world:
        raise ConfigError(f"data.train_shards names {len(shards)} shard(s) but {world} processes train: each needs "
                          f"at least one; write more, smaller shards (cnnlab-shards --maxcount) or use fewer processes")
    readers = world * max(1, workers)
    if len(shards) < readers:
        log.warning("data.train_shards: %d shard(s) for %d process(es) x %d worker(s): some workers have no shard "
                    "to read; write more, smaller shards (cnnlab-shards --maxcount) or lower data.num_workers",
                    len(shards), world, max(1, workers))
    sizes = {s.samples for s in shards}
    if world > 1 and (len(shards) % world or len(sizes) > 1):
        log.warning("data.train_shards: %d shards of %s samples over %d processes: the processes' shares differ, "
                    "so each epoch some samples are read twice (padding) and others left out until a later epoch; "
                    "shards of equal size, a multiple of %d of them, make every epoch see each sample once",
                    len(shards), "/".join(str(n) for n in sorted(sizes)), world, world)


def _class_counts(manifest, shard: Shard) -> list[int]:
    from cnnlab.data.shardset import shard_name

    name = shard_name(shard.url)
    for split in manifest.splits.values():
        if name in split.get("shard_class_counts", {}):
            return [int(n) for n in split["shard_class_counts"][name]]
    return []


def _first_sample(shard: Shard, stream: ShardStream):
    """The first sample of a shard, decoded (no augmentation): the pipeline check's input."""
    one = WorkerPlan((shard,), 1)
    stream.configure(0, 0, [one], [0], False)
    try:
        _, _, _, x, y = next(iter(stream))
    except StreamError as bad:
        raise ConfigError(str(bad)) from None
    return x[0], y
