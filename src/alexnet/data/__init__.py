"""Data sets, the paper's preprocessing and batched augmentation."""

from .loaders import DataBundle, EpochBatchSampler, load_data, model_input

__all__ = ["DataBundle", "EpochBatchSampler", "load_data", "model_input"]
