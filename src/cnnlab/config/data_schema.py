"""The data and augment sections of the schema: the keys every data source has, each source's own, and which
source a `data.name` is (DATA_SOURCES)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional

from pydantic import Field

from cnnlab.config.fields import (DataSampler, Fraction, LoaderKind, MixAlpha, NonNegative, NonNegativeInt, Positive,
                                  PositiveInt, Probability, ResizeMode, Section, Size)


# ---- data: one base that every data source's keys extend ----
class DataSplit(Section):
    val: Fraction
    test: Annotated[Optional[float], Field(ge=0, lt=1, description="must be in [0, 1), or null")] = None


class DataBase(Section):
    """Keys every data set has: what the model is fed, how it is split, batched and loaded."""

    name: str
    in_channels: PositiveInt
    num_classes: PositiveInt
    input_size: Size
    classes: Annotated[Optional[list[str | int]], Field(description="must be a list of class names, or null")] = None
    class_subset: Annotated[Optional[list[Annotated[int, Field(ge=0)]]], Field(
        min_length=1, description="must be a list of class indices (integers >= 0), e.g. [0, 1, 2], or null")] = None
    mean: Annotated[Optional[list[float]], Field(
        description="must be a list of numbers, one per channel, or null to measure it on the training images")]
    std: Annotated[Optional[list[Annotated[float, Field(gt=0)]]], Field(
        description="must be positive numbers, one per channel, or null to measure them on the training images")]
    split: DataSplit
    batch_size: PositiveInt
    eval_batch_size: PositiveInt
    loader: LoaderKind
    num_workers: NonNegativeInt
    sampler: DataSampler
    max_per_class: Annotated[Optional[Annotated[int, Field(gt=0)] | list[Annotated[int, Field(gt=0)]]], Field(
        description="must be a positive integer, a list of one positive integer per class, or null")]

    # The keys of a source that name files, folders or URLs: saved absolute for a run's later commands, and
    # never written into. A source without such keys (generated or bundled data) has none.
    PATH_KEYS: ClassVar[tuple[str, ...]] = ()

    def paths(self) -> dict[str, str]:
        """This source's file, folder and URL keys that are set, with their values."""
        return {key: str(getattr(self, key)) for key in self.PATH_KEYS if getattr(self, key)}

    def image_resize_mode(self) -> str:
        """How an image of another size is brought to input_size (predict, explain, export): the source's
        data.resize_mode; stretch for a source without the key, whose images all have one size."""
        return getattr(self, "resize_mode", "stretch")


class DownloadableData(DataBase):
    """torchvision's data sets, read from their files under `root`."""

    root: str
    download: bool

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("root",)


class FakeData(DataBase):
    num_samples: PositiveInt
    image_size: Size
    generator_seed: int


class ShapesData(DataBase):
    num_samples: PositiveInt
    image_size: PositiveInt
    generator_seed: int
    noise: NonNegative


class ImageFolderData(DataBase):
    num_classes: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None
    root: Optional[str] = None
    train_root: Optional[str] = None
    val_root: Optional[str] = None
    test_root: Optional[str] = None
    resize_mode: ResizeMode
    in_memory: Annotated[Literal["auto"] | bool, Field(description="is not accepted; choose one of auto, true, false")]
    memory_limit_mb: Positive
    skip_unreadable: bool
    cache: bool
    cache_dir: Annotated[Optional[str], Field(description="must be a folder path, or null for the default")]

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("root", "train_root", "val_root", "test_root")


class WebDatasetData(DataBase):
    """Tar shards streamed (cnnlab.data.stream): URLs or brace patterns, and the manifest cnnlab-shards wrote."""

    num_classes: Annotated[Optional[int], Field(gt=0, description="must be a positive integer, or null")] = None
    train_shards: Annotated[str, Field(min_length=1, description="must name the training shards, e.g. "
                                       "/data/train-{000000..000099}.tar")]
    val_shards: Optional[str] = None
    test_shards: Optional[str] = None
    manifest: Optional[str] = None
    resize_mode: ResizeMode
    shuffle_buffer: NonNegativeInt

    PATH_KEYS: ClassVar[tuple[str, ...]] = ("train_shards", "val_shards", "test_shards", "manifest")


DOWNLOADABLE = ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "svhn", "stl10")
DATA_SOURCES: dict[str, type[DataBase]] = {
    "mnist_sample": DataBase, "digits": DataBase, "fake": FakeData, "shapes": ShapesData,
    "imagefolder": ImageFolderData, "webdataset": WebDatasetData, **{name: DownloadableData for name in DOWNLOADABLE},
}


# ---- augmentation ----
class Mix(Section):
    mixup_alpha: MixAlpha = 0.0
    cutmix_alpha: MixAlpha = 0.0
    prob: Probability = 1.0
    switch_prob: Probability = 0.5


class Augment(Section):
    name: Optional[str] = None
    transforms: Annotated[list[dict], Field(
        description="must be a list of transform entries (each with a _target_)")] = []
    mix: Optional[Mix] = None
