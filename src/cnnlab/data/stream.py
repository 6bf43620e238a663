"""data=webdataset: training and evaluation batches streamed from tar shards (cnnlab.data.shardset).

Who reads what, each epoch (docs/data.md, "Streaming shards"):
  - the shard list is shuffled with (seed, epoch) (training only), split by rank (shard r, r + world, ...) and
    then by loader worker (w, w + workers, ...);
  - each worker reads its shards in turn, mixes their samples in a shuffle buffer seeded with (seed, epoch,
    rank, worker) (training only), decodes them as image folders are decoded and augments each with a seed
    from (seed, epoch, sample key), in chunks of CHUNK samples;
  - the main process puts the chunks into one fixed order, (chunk number, worker), whatever order the workers
    deliver them in, and cuts batches of data.batch_size from it.
So an epoch's batches depend only on (seed, epoch, world size, data.num_workers). Under torchrun every process
trains on ceil(N / world) samples per epoch, N being the training samples in the manifest, so that all take the
same number of steps: a process whose shards hold fewer samples reads its first worker's shards again for the
rest (padding, as DistributedSampler pads), one whose shards hold more leaves its last ones out this epoch.
With shards of equal size and a shard count divisible by the world size, neither happens and every sample is
trained on exactly once per epoch. Evaluation reads every shard once, unshuffled and unpadded.

Resuming mid-epoch is exact: the interrupted epoch's order is rebuilt from (seed, epoch) and the samples already
trained on are skipped before decoding (their bytes are still read; whole chunks are not even decoded).
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
import random
import zlib
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cnnlab.data.imagefolder import EXTENSIONS, UnreadableImage, read_image
from cnnlab.data.loaders import Normalize, _start_mix
from cnnlab.data.mixing import BatchMix
from cnnlab.data.shardset import Shard, webdataset
from cnnlab.errors import ConfigError
from cnnlab.engine.seeding import derived_generator, transform_sample

log = logging.getLogger(__name__)

CHUNK = 16                 # samples a worker hands over at once (fewer inter-process messages than one each)
SHARD_SALT = 0x73686172    # the epoch's shard order, apart from the other (seed, epoch) streams
BUFFER_SALT = 0x62756666   # the workers' shuffle buffers
KEY_LOG = "CNNLAB_STREAM_KEY_LOG"  # tests: a file each training batch's sample keys are appended to
IMAGE_EXTS = tuple(e.lstrip(".") for e in EXTENSIONS)


class StreamError(ValueError):
    """A shard that cannot be read, or a sample in it that is not an image with a class."""


@dataclass(frozen=True)
class WorkerPlan:
    shards: tuple[Shard, ...]  # read in this order, again from the first while the quota is not reached
    quota: int                 # samples this worker yields in the epoch


def per_process(total: int, world: int) -> int:
    """Training samples every process takes per epoch (DistributedSampler's padded share)."""
    return -(-total // world)


def epoch_plan(shards: list[Shard], *, seed: int, epoch: int, rank: int, world: int, workers: int,
               train: bool) -> list[WorkerPlan]:
    """Which shards each of this process's workers reads in `epoch`, and how many samples it yields."""
    order = list(shards)
    if train:
        perm = torch.randperm(len(order), generator=derived_generator(seed, epoch, SHARD_SALT)).tolist()
        order = [order[i] for i in perm]
    mine = order[rank::world]
    n = max(1, workers)
    parts = [mine[w::n] for w in range(n)]
    quotas = [sum(s.samples for s in part) for part in parts]
    if train:  # every process the same number of samples: pad on the first worker, cut from the last
        diff = per_process(sum(s.samples for s in shards), world) - sum(quotas)
        if diff > 0:
            quotas[0] += diff
        for w in reversed(range(n)):
            if diff >= 0:
                break
            cut = min(quotas[w], -diff)
            quotas[w] -= cut
            diff += cut
    return [WorkerPlan(tuple(part), quota) for part, quota in zip(parts, quotas)]


def chunk_order(quotas: list[int], done: int) -> tuple[list[int], list[tuple[int, int, int]]]:
    """After `done` samples of the epoch: how many samples each worker skips, and the (chunk, worker, size) of
    the chunks still to come, in the epoch's order (chunk number, then worker)."""
    skips, rest, seen = [0] * len(quotas), [], 0
    for i in range(max((-(-q // CHUNK) for q in quotas), default=0)):
        for w, quota in enumerate(quotas):
            size = min(CHUNK, quota - i * CHUNK)
            if size <= 0:
                continue
            used = min(size, max(0, done - seen))
            seen += size
            skips[w] += used
            if size > used:
                rest.append((i, w, size - used))
    return skips, rest


class ShardStream(IterableDataset):
    """One process's samples of a shard set for one epoch (`configure` says which), read by each DataLoader
    worker for its own part. Yields (chunk number, worker, keys, uint8 images, labels)."""

    def __init__(self, channels: int, size, resize_mode: str, num_classes: int, transform=None, seed: int = 0,
                 buffer: int = 0):
        self.channels, self.size, self.resize_mode = channels, tuple(size), resize_mode
        self.num_classes, self.transform, self.seed, self.buffer = num_classes, transform, seed, buffer
        self.epoch, self.rank, self.plans, self.skips, self.shuffle = 0, 0, [], [], False

    def configure(self, epoch: int, rank: int, plans: list[WorkerPlan], skips: list[int], shuffle: bool) -> None:
        self.epoch, self.rank, self.plans, self.skips, self.shuffle = epoch, rank, plans, skips, shuffle

    def __iter__(self):
        info = get_worker_info()
        w = info.id if info is not None else 0
        if w >= len(self.plans):
            return
        plan, skip = self.plans[w], self.skips[w]
        keys, images, labels = [], [], []
        for pos, sample in enumerate(itertools.islice(self._raw(plan, w), plan.quota)):
            if pos < skip:  # trained on before an interruption: read, not decoded
                continue
            keys.append(sample["__key__"])
            x, y = self._decode(sample)
            images.append(x)
            labels.append(y)
            if (pos + 1) % CHUNK == 0 or pos + 1 == plan.quota:
                yield pos // CHUNK, w, keys, torch.stack(images), torch.tensor(labels, dtype=torch.long)
                keys, images, labels = [], [], []

    def _raw(self, plan: WorkerPlan, w: int):
        """The plan's shards' samples (undecoded) through the shuffle buffer, pass after pass while the quota
        asks for more (padding): each pass is mixed on its own, so a repeat never comes before the first pass ends."""
        if not plan.shards or not plan.quota:
            return
        shuffle = None
        if self.shuffle and self.buffer > 1:
            rng = random.Random(derived_generator(self.seed, self.epoch, BUFFER_SALT, self.rank, w).initial_seed())
            shuffle = webdataset().filters.shuffle(self.buffer, initial=self.buffer, rng=rng)
        while True:
            one_pass = self._read(plan.shards)
            yield from shuffle(one_pass) if shuffle is not None else one_pass

    @staticmethod
    def _read(shards):
        """Every sample of `shards` once; a shard holding another number of samples than the manifest says is
        an error (it was changed after the manifest was written), so that no epoch is silently short or padded."""
        tariterators = webdataset().tariterators
        for shard in shards:
            count = 0
            try:
                for sample in tariterators.tarfile_samples([{"url": shard.url}]):
                    count += 1
                    yield sample
            except StreamError:
                raise
            except Exception as bad:
                raise StreamError(f"cannot read shard {shard.url}: {bad}") from None
            if count != shard.samples:
                raise StreamError(f"cannot read shard {shard.url} as the manifest describes it: it holds {count} "
                                  f"samples, the manifest says {shard.samples}; write the shards and their manifest "
                                  f"again with cnnlab-shards")

    def _decode(self, sample: dict):
        key, url = sample["__key__"], sample.get("__url__", "?")
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None or "cls" not in sample:
            raise StreamError(f"cannot read sample {key} in shard {url}: it needs an image ({', '.join(IMAGE_EXTS)}) "
                              f"and a .cls entry, it has {', '.join(k for k in sample if not k.startswith('__'))}")
        try:
            label = int(sample["cls"])
        except ValueError:
            raise StreamError(f"cannot read sample {key} in shard {url}: its .cls is not a class index") from None
        if not 0 <= label < self.num_classes:
            raise StreamError(f"cannot read sample {key} in shard {url}: class {label} is not in [0, "
                              f"{self.num_classes}) (the manifest's classes)")
        try:
            x = read_image(io.BytesIO(sample[ext]), self.channels, self.size, self.resize_mode)
        except UnreadableImage as bad:
            reason = str(bad).split(": ", 1)[-1].split(" <_io")[0]  # its file is a buffer: said by key and shard
            raise StreamError(f"cannot read image {key}.{ext} in shard {url}: {reason}") from None
        index = zlib.crc32(key.encode())  # a sample's augmentation draws follow its key, not its position
        return transform_sample(self.transform, x, self.seed, self.epoch, index), label


class StreamLoader:
    """Batches streamed from shards: normalised floats on the device, like DataLoaderAdapter; implements
    cnnlab.engine.task.TrainLoader. `train`: shuffled, padded to the per-process share; else every sample of
    this process's shards once, in order. A new DataLoader each epoch: its workers receive the epoch's plan."""

    kind = "stream"

    def __init__(self, shards: list[Shard], dataset: ShardStream, batch_size: int, *, mean, std, train: bool,
                 seed: int, device, num_workers: int = 0, mix: BatchMix | None = None, rank: int = 0, world: int = 1):
        self.shards, self.dataset, self.batch_size = list(shards), dataset, int(batch_size)
        self.train, self.seed, self.device = train, seed, torch.device(device)
        self.workers, self.rank, self.world, self.mix = int(num_workers), rank, world, mix
        self.normalize = Normalize(mean, std, self.device)
        self.epoch, self.skipped, self._done, self._resume = 0, 0, 0, None
        self.key_log = os.environ.get(KEY_LOG) if train else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self._done, "generator": None,
                "mix": self.mix.state() if self.mix is not None else None, "layout": [self.world, self.workers]}

    def resume(self, state: dict, on_resumed=None) -> None:
        """The next iteration continues the interrupted epoch after its first `batches` batches: the same order,
        the samples already trained on skipped."""
        self.epoch = int(state["epoch"])
        self._resume = (state, on_resumed)

    def samples(self) -> int:
        """Samples this process takes per epoch."""
        if self.train:
            return per_process(self.dataset_size, self.world)
        return sum(s.samples for s in self.shards[self.rank::self.world])

    def __len__(self) -> int:
        return math.ceil(self.samples() / self.batch_size)

    @property
    def dataset_size(self) -> int:
        return sum(s.samples for s in self.shards)

    def __iter__(self):
        resume, self._resume = self._resume, None
        resume, on_resumed = resume if resume else (None, None)
        done = int(resume["batches"]) if resume else 0
        if resume and list(resume.get("layout") or [self.world, self.workers]) != [self.world, self.workers]:
            log.warning("resuming a streamed epoch with %d process(es) x %d worker(s), interrupted with %s: the "
                        "epoch's order differs, so its rest may repeat or miss some samples", self.world,
                        self.workers, " x ".join(str(v) for v in resume["layout"]))
        plans = epoch_plan(self.shards, seed=self.seed, epoch=self.epoch, rank=self.rank, world=self.world,
                           workers=self.workers, train=self.train)
        skips, order = chunk_order([p.quota for p in plans], done * self.batch_size)
        self.dataset.configure(self.epoch, self.rank, plans, skips, self.train)
        self._done = done
        _start_mix(self.mix, self.seed, self.epoch)
        if resume and self.mix is not None and resume.get("mix") is not None:
            self.mix.set_state(resume["mix"])
        if on_resumed is not None:
            on_resumed()
        try:
            yield from self._batches(order)
        except Exception as bad:
            if isinstance(bad, (StreamError, UnreadableImage)):  # from a worker: its traceback is in the message
                lines = [line for line in str(bad).splitlines() if "cannot read" in line]
                raise ConfigError(lines[-1].split("Error: ")[-1] if lines else str(bad)) from None
            raise

    def _batches(self, order):
        if self.workers:  # imported once here, the forked workers of every epoch inherit them (~1 s each else)
            import PIL.Image  # noqa: F401
            import torchvision.transforms.v2.functional  # noqa: F401
        loader = DataLoader(self.dataset, batch_size=None, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda")
        chunks, pending, parts, held = iter(loader), {}, [], 0
        for i, w, _ in order:
            while (i, w) not in pending:
                item = next(chunks, None)
                if item is None:  # a worker ended early without an error: not expected, but never a hang
                    raise StreamError(f"cannot read the epoch's samples: loader worker {w} ended before chunk {i}")
                pending[item[0], item[1]] = item[2:]
            parts.append(pending.pop((i, w)))
            held += len(parts[-1][0])
            while held >= self.batch_size or (held and (i, w) == order[-1][:2]):
                keys = [k for p in parts for k in p[0]]
                x, y = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
                n = min(self.batch_size, held)
                rest = (keys[n:], x[n:], y[n:])
                parts, held = ([rest] if held > n else []), held - n
                yield self._batch(keys[:n], x[:n], y[:n])

    def _batch(self, keys, x, y):
        if self.key_log:
            with open(self.key_log, "a") as log_file:
                log_file.write("".join(f"{self.rank} {self.epoch} {key}\n" for key in keys))
        x = self.normalize(x.to(self.device, non_blocking=True).float())
        y = y.to(self.device, non_blocking=True)
        batch = self.mix(x, y) if self.mix is not None else (x, y)
        self._done += 1
        return batch


def build_stream(cfg, seed: int, device: torch.device, augment, train_augment: bool, shard: tuple[int, int]):
    """build_data for data=webdataset: the manifest gives classes, sizes and mean/std; the shards stream."""
    from cnnlab.data import build  # build_data's shared parts; build imports this module only for data=webdataset
    from cnnlab.data.augment import build_v2_pipeline
    from cnnlab.data.sources import Pool
    from cnnlab.data.transforms import lighting

    _refuse_unsupported(cfg)
    manifest, shards = _shard_sets(cfg)
    found = {"classes": list(manifest.classes), "num_classes": len(manifest.classes)}
    _check_classes(cfg, manifest)
    for key in ("train_shards", "val_shards", "test_shards", "manifest"):  # saved absolute: eval may run elsewhere
        value = cfg.get(key)
        if value and is_local_relative(str(value)):
            found[key] = os.path.abspath(os.path.expanduser(str(value)))
    channels = int(cfg.in_channels)
    stats = manifest.stats_for(channels) or {}
    for key in ("mean", "std"):
        if cfg[key] is None:
            if key not in stats:
                raise ConfigError(f"data.{key}=null and the manifest {manifest.where} gives no {key} for "
                                  f"{channels}-channel images; set data.mean and data.std")
            found[key] = [float(v) for v in stats[key]]
    info = build.info_from(cfg, found, subset=None)
    rank, world = shard
    workers = int(cfg.num_workers)
    _check_shard_counts(shards["train"], world, workers)

    transforms, mix_cfg = build.augment_parts(augment) if train_augment else ([], None)
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
        build.check_pipeline(transforms, "dataloader", Pool(first[1], images=first[0][None]), None, info)
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
    return build.DataBundle(info, train, val, test, loader_kind="stream", sizes=sizes, found=found,
                            class_counts=counts)


def _check_classes(cfg, manifest) -> None:
    """data.classes / data.num_classes, when given, must be the manifest's."""
    classes = list(manifest.classes)
    if cfg.get("classes") is not None and [str(c) for c in cfg.classes] != classes:
        raise ConfigError(f"data.classes={list(cfg.classes)} but the manifest {manifest.where} lists the classes "
                          f"{classes}; set data.classes=null to take the manifest's")
    if cfg.get("num_classes") is not None and int(cfg.num_classes) != len(classes):
        raise ConfigError(f"data.num_classes={cfg.num_classes} but the manifest {manifest.where} lists "
                          f"{len(classes)} classes ({', '.join(classes)}); set data.num_classes=null to take the "
                          f"manifest's count")


def is_local_relative(value: str) -> bool:
    from cnnlab.data.shardset import is_local

    return is_local(value) and not value.startswith("file:") and not os.path.isabs(os.path.expanduser(value))


def _refuse_unsupported(cfg) -> None:
    for key, bad, why in (("class_subset", cfg.get("class_subset") is not None, "null"),
                          ("max_per_class", cfg.get("max_per_class") is not None, "null"),
                          ("sampler", cfg.get("sampler", "random") != "random", "random"),
                          ("loader", str(cfg.loader) not in ("auto", "dataloader"), "auto")):
        if bad:
            raise ConfigError(f"data.{key}={cfg.get(key)} is not available with data=webdataset (a stream is read "
                              f"shard by shard, never indexed); use data.{key}={why}, or write the shards you "
                              f"want with cnnlab-shards")


def manifest_of(cfg):
    """(the manifest, where it was read) of data.manifest, or the one beside the first training shard."""
    from cnnlab.data.shardset import default_manifest, expand, load_manifest

    manifest_url = cfg.get("manifest")
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
        key, pattern = f"data.{split}_shards", cfg.get(f"{split}_shards")
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
