"""Two ways to feed batches: the whole set resident on the device, or a classic DataLoader."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cnnlab.data.augment import BatchAugment
from cnnlab.data.balance import balanced_weights, epoch_order
from cnnlab.data.imagefolder import UnreadableImage
from cnnlab.data.mixing import BatchMix
from cnnlab.errors import ConfigError
from cnnlab.engine.seeding import derived_generator, transform_sample

MIX_SALT = 0x6D6978  # keeps the MixUp/CutMix stream apart from the shuffle/augmentation stream
RANK_SALT = 0x72616E6B  # each process's augmentation stream under distributed training


def shard(order: torch.Tensor | list, rank: int, world: int, pad: bool):
    """This process's share of an epoch's sample order, as torch's DistributedSampler splits it: padded (for
    training, by repeating the order's first samples) to a multiple of the world size so that every process
    runs the same number of steps, then strided: process r takes positions r, r + world, ... With per-process
    batch b, the i-th batches of all processes together are exactly positions [i*b*world, (i+1)*b*world) of
    the order: the global batch a single process with batch b*world would draw.

    Evaluation shards are not padded (pad=False): every sample is counted exactly once."""
    if world == 1:
        return order
    n = len(order)
    if pad and n % world:
        extra = world - n % world
        repeats = order if extra <= n else (order * (extra // n + 1) if isinstance(order, list)
                                            else order.repeat(extra // n + 1))
        order = order + repeats[:extra] if isinstance(order, list) else torch.cat([order, repeats[:extra]])
    return order[rank::world]


def shard_size(n: int, rank: int, world: int, pad: bool) -> int:
    """Samples in process `rank`'s share of n (see `shard`)."""
    if world == 1:
        return n
    return -(-n // world) if pad else len(range(rank, n, world))


def _start_mix(mix: BatchMix | None, seed: int, epoch: int) -> None:
    if mix is not None:
        mix.start_epoch(derived_generator(seed, epoch, MIX_SALT).initial_seed())


class Normalize:
    """(x / 255 - mean) / std folded into one multiply and one add, per channel."""

    def __init__(self, mean, std, device):
        mean = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -mean / std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift  # measured faster than one broadcast addcmul on CPU


def gather_rows(images: torch.Tensor, index: torch.Tensor, device, chunk: int = 4096) -> torch.Tensor:
    """images[index] on `device`, gathered a chunk at a time: the host never holds a second copy of the split."""
    out = torch.empty((len(index), *images.shape[1:]), dtype=images.dtype, device=device)
    for start in range(0, len(index), chunk):
        out[start:start + chunk] = images[index[start:start + chunk]].to(device, non_blocking=False)
    return out


class TensorLoader:
    """Batches drawn from uint8 images held on the device: shuffle by index, augment whole batches, normalise.

    Every epoch's order and augmentation come from a generator seeded with (seed, epoch), so epoch k looks
    the same whether or not the run was interrupted before it. `sampler="balanced"` (training): the order is
    len(set) draws with replacement, every class equally likely (cnnlab.data.balance.epoch_order).
    Implements cnnlab.engine.task.TrainLoader.
    """

    kind = "tensor"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, mean, std,
                 shuffle: bool = False, augment: BatchAugment | None = None, mix: BatchMix | None = None,
                 seed: int = 0, drop_last: bool = False, device: torch.device | str = "cpu",
                 rank: int = 0, world: int = 1, sampler: str = "random", index: torch.Tensor | None = None):
        self.device = torch.device(device)
        self.rank, self.world = rank, world  # distributed: this process takes its shard of every epoch
        if index is not None and self.device.type != "cpu":  # only this split's rows travel to the device
            images, index = gather_rows(images, index, self.device), None
        self.images = images.to(self.device)  # on the CPU: shared by the splits, maybe memory-mapped, never copied
        self.index = None if index is None else index.to(self.device)  # rows of `images` that are this split
        self.labels = labels.to(self.device)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.sample_weights = balanced_weights(self.labels) if shuffle and sampler == "balanced" else None
        self.augment = augment if augment else None
        self.mix = mix
        self.normalize = Normalize(mean, std, self.device)
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.skipped = 0       # unreadable files dropped: none here, the images are already decoded
        self._live = None      # (generator, batches yielded) of the epoch being iterated
        self._resume = None    # state_dict() of an interrupted epoch, applied by the next __iter__

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        """Where the current epoch stands: batches done and the random stream's state after them."""
        generator, done = self._live if self._live else (None, 0)
        return {"epoch": self.epoch, "batches": done,
                "generator": generator.get_state() if generator is not None else None,
                "mix": self.mix.state() if self.mix is not None else None}

    def resume(self, state: dict, on_resumed=None) -> None:
        """The next epoch iteration continues an interrupted one: same order, same augmentation draws.
        `on_resumed()` runs once the position is restored, before the first new batch is drawn."""
        self.epoch = int(state["epoch"])
        self._resume = (state, on_resumed)

    def __len__(self) -> int:
        n = self._shard_size()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _shard_size(self) -> int:
        # training shards (shuffled) are padded so all processes step together; evaluation shards are exact
        return shard_size(len(self.labels), self.rank, self.world, pad=self.shuffle)

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def __iter__(self):
        n = len(self.labels)
        generator = derived_generator(self.seed, self.epoch, device=self.device) if (self.shuffle or self.augment) else None
        order = epoch_order(n, generator, self.device, self.sample_weights) if self.shuffle else None
        if self.world > 1:
            if order is None:
                order = torch.arange(n, device=self.device)
            order = shard(order, self.rank, self.world, pad=self.shuffle)
            if generator is not None:  # the order is shared; each process draws its own augmentation
                generator = derived_generator(self.seed, self.epoch, RANK_SALT + self.rank, device=self.device)
        _start_mix(self.mix, self.seed, self.epoch)
        first, resume, self._resume = 0, self._resume, None
        if resume is not None:
            resume, on_resumed = resume
            first = int(resume["batches"])
            if generator is not None and resume["generator"] is not None:
                generator.set_state(resume["generator"])
            if self.mix is not None and resume.get("mix") is not None:
                self.mix.set_state(resume["mix"])
            if on_resumed is not None:
                on_resumed()
        self._live = (generator, first)
        for b in range(first, len(self)):
            start = b * self.batch_size
            idx = order[start:start + self.batch_size] if order is not None else slice(start, start + self.batch_size)
            x = self.images[idx if self.index is None else self.index[idx]].float()
            if self.augment is not None:
                x = self.augment(x, generator)
            x, y = self.normalize(x), self.labels[idx]
            batch = self.mix(x, y) if self.mix is not None else (x, y)
            self._live = (generator, b + 1)
            yield batch


class TransformDataset(Dataset):
    """Per-sample view of uint8 tensors with an optional torchvision v2 transform, for the DataLoader path.

    Indexed by (index, epoch) pairs from EpochSampler (plain indices also work, unseeded)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None, seed: int = 0,
                 index: torch.Tensor | None = None):
        self.images, self.labels, self.transform, self.seed = images, labels, transform, seed
        self.index = index  # rows of `images` that are this set (a split's view), or None: all

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, None)
        image = self.images[i if self.index is None else int(self.index[i])]
        return transform_sample(self.transform, image, self.seed, epoch, i), self.labels[i]


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, epoch) pairs: the epoch's order from a generator seeded with (seed, epoch), starting at
    an offset when an interrupted epoch is resumed (no batches are replayed). With `labels` and
    balanced=True the order is n draws with replacement, every class equally likely."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1,
                 labels: torch.Tensor | None = None, balanced: bool = False):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.sample_weights = balanced_weights(labels) if shuffle and balanced else None
        self.rank, self.world = rank, world  # distributed: this process's shard, split as DistributedSampler does
        self.epoch, self.offset = 0, 0

    def __len__(self) -> int:
        return shard_size(self.n, self.rank, self.world, pad=self.shuffle) - self.offset

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if self.shuffle:
            order = epoch_order(self.n, derived_generator(self.seed, self.epoch), "cpu", self.sample_weights).tolist()
        else:
            order = list(range(self.n))
        order = shard(order, self.rank, self.world, pad=self.shuffle)
        epoch = self.epoch
        return iter([(i, epoch) for i in order[self.offset:]])


class DataLoaderAdapter:
    """A torch DataLoader that yields normalised float batches on the device, like TensorLoader.

    Workers are persistent; which samples a batch holds and how each is augmented depend only on (seed, epoch,
    position), never on the number of workers or on the process having been restarted. Implements
    cnnlab.engine.task.TrainLoader."""

    kind = "dataloader"

    def __init__(self, dataset: Dataset, batch_size: int, *, mean, std, shuffle: bool, seed: int, device,
                 num_workers: int = 0, drop_last: bool = False, mix: BatchMix | None = None, collate_fn=None,
                 rank: int = 0, world: int = 1, sampler: str = "random"):
        self.device = torch.device(device)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.batch_size = int(batch_size)
        self.sampler = EpochSampler(len(dataset), shuffle, seed, rank, world,
                                    labels=getattr(dataset, "labels", None), balanced=sampler == "balanced")
        pin = self.device.type == "cuda"
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers, drop_last=drop_last,
            pin_memory=pin, persistent_workers=num_workers > 0,
            worker_init_fn=_seed_worker if num_workers > 0 else None, collate_fn=collate_fn)
        self.mix = mix
        self.skipped = 0  # unreadable files dropped by a skipping collate function, over all epochs
        self._done = 0    # batches yielded in the current epoch
        self._resume = None
        self.normalize = Normalize(mean, std, self.device)
        self.non_blocking = pin

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self._done, "generator": None,
                "mix": self.mix.state() if self.mix is not None else None}

    def resume(self, state: dict, on_resumed=None) -> None:
        """The next iteration continues the interrupted epoch after its first `batches` batches.
        `on_resumed()` runs once positioned, before the first new batch is drawn."""
        self.epoch = int(state["epoch"])
        self._resume = (state, on_resumed)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset_size(self) -> int:
        return len(self.loader.dataset)

    def __iter__(self):
        resume, self._resume = self._resume, None
        resume, on_resumed = resume if resume else (None, None)
        skip = int(resume["batches"]) if resume else 0
        self.sampler.set_epoch(self.epoch)
        self.sampler.offset = skip * self.batch_size
        self._done = skip
        _start_mix(self.mix, self.seed, self.epoch)
        if resume and self.mix is not None and resume.get("mix") is not None:
            self.mix.set_state(resume["mix"])
        if on_resumed is not None:
            on_resumed()  # e.g. the global RNG as it was after the last finished step
        try:
            yield from self._batches()
        except Exception as bad:
            if isinstance(bad, UnreadableImage):  # re-raised from a worker with its traceback in the message
                lines = [line for line in str(bad).splitlines() if "cannot read image" in line]
                raise ConfigError(lines[-1].split("UnreadableImage: ")[-1] if lines else str(bad)) from None
            raise
        finally:
            self.sampler.offset = 0

    def _batches(self):
        for batch in self.loader:
            x, y = batch[0], batch[1]
            if len(batch) == 3:  # (x, y, number of unreadable files skipped)
                self.skipped += int(batch[2])
                if x is None:
                    self._done += 1
                    continue
            x = x.to(self.device, non_blocking=self.non_blocking).float()
            y = y.to(self.device, non_blocking=self.non_blocking)
            x = self.normalize(x)
            batch = self.mix(x, y) if self.mix is not None else (x, y)
            self._done += 1
            yield batch


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
