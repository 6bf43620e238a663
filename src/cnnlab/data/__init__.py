"""Data: sources (what the images are), splits, augmentation and loaders (how batches reach the model)."""

from cnnlab.data.build import DataBundle, DataInfo, build_data

__all__ = ["DataBundle", "DataInfo", "build_data"]
