"""Data: sources (what the images are), splits, augmentation and loaders (how batches reach the model)."""

from cnnlab.data.build import build_data
from cnnlab.data.bundle import DataBundle, DataInfo

__all__ = ["DataBundle", "DataInfo", "build_data"]
