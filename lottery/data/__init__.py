"""Datasets: in-memory vision datamodules with a resumable, seeded batch order."""

from lottery.data.stream import BatchStream, EvalBatches, epoch_permutation
from lottery.data.vision import DATASETS, DatasetInfo, DataSpec, LoaderSpec, VisionDataModule, load_split

__all__ = ["DATASETS", "BatchStream", "DataSpec", "DatasetInfo", "EvalBatches", "LoaderSpec", "VisionDataModule",
           "epoch_permutation", "load_split"]
