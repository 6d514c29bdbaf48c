"""MNIST-family datasets through torchvision, held in memory, as a LightningDataModule."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torchvision import datasets

from lottery.data.stream import BatchStream, EvalBatches
from lottery.errors import DataError

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the config validator need to know about a dataset before loading it."""

    torchvision_class: type
    folder: str
    input_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    mean: float
    std: float


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(datasets.MNIST, "MNIST", (1, 28, 28), 10, 60000, 0.1307, 0.3081),
    "fashion_mnist": DatasetInfo(datasets.FashionMNIST, "FashionMNIST", (1, 28, 28), 10, 60000, 0.2860, 0.3530),
}


def _copy_debian_fashion_mnist(raw: Path) -> None:
    """Debian's dataset-fashion-mnist ships gzipped IDX files; torchvision reads them unpacked from raw/."""
    raw.mkdir(parents=True, exist_ok=True)
    for gz in sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz")):
        target = raw / gz.name[: -len(".gz")]
        if target.exists():
            continue
        tmp = target.with_suffix(".tmp")
        with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    log.info("Unpacked Debian's Fashion-MNIST from %s into %s", DEBIAN_FASHION_MNIST, raw)


def load_split(name: str, root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as (uint8 images [N, H, W], int64 labels), downloading only if allowed and needed."""
    info = DATASETS[name]
    raw = Path(root) / info.folder / "raw"
    if name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir() and not any(raw.glob("*-ubyte")):
        _copy_debian_fashion_mnist(raw)
    try:
        ds = info.torchvision_class(root, train=train, download=False)
    except RuntimeError:
        if not download:
            raise DataError(
                f"{name} is not in {raw}; put the raw IDX files there, point data.root (or LOTTERY_DATA) "
                "at a folder that has them, or set data.download=true"
            ) from None
        try:
            ds = info.torchvision_class(root, train=train, download=True)
        except Exception as err:  # torchvision raises several kinds (URLError, RuntimeError, OSError)
            raise DataError(
                f"{name} is not in {raw} and downloading it failed ({type(err).__name__}); when offline, copy the "
                f"raw IDX files into {raw} or point data.root (or LOTTERY_DATA) at a folder that has them"
            ) from None
    return ds.data, ds.targets


class VisionDataModule(L.LightningDataModule):
    """Train/validation/test tensors in memory; training batches come from a seeded `BatchStream`.

    The validation set is the last `val_size` examples of a fixed permutation (seeded by `split_seed`)
    of the official training set, so it is the same for every run seed.
    """

    def __init__(self, name: str, root: str, download: bool = True, val_size: int = 5000, split_seed: int = 0,
                 train_subset: int | None = None, eval_subset: int | None = None, batch_size: int = 60,
                 seed: int = 0, iterations: int = 1, start_step: int = 0, eval_batch_size: int = 1000):
        super().__init__()
        if name not in DATASETS:
            raise DataError(f"data.name={name!r} is unknown; choose one of {', '.join(sorted(DATASETS))}")
        self.info = DATASETS[name]
        self.name, self.root, self.download = name, root, download
        self.val_size, self.split_seed = val_size, split_seed
        self.train_subset, self.eval_subset = train_subset, eval_subset
        self.batch_size, self.seed, self.eval_batch_size = batch_size, seed, eval_batch_size
        self.iterations, self.start_step = iterations, start_step
        self.device = torch.device("cpu")
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_train(self) -> int:
        """Training examples after the validation hold-out and `train_subset`."""
        n = self.info.num_train - self.val_size
        return min(n, self.train_subset) if self.train_subset else n

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.batch_size

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0).sub_(self.info.mean).div_(self.info.std)
        return x.unsqueeze(1) if x.dim() == 3 else x

    def setup(self, stage: str | None = None) -> None:
        if self.tensors:
            return
        x, y = load_split(self.name, self.root, train=True, download=self.download)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.split_seed))
        train_idx, val_idx = order[: len(x) - self.val_size], order[len(x) - self.val_size:]
        train_idx = train_idx[: self.num_train]
        test_x, test_y = load_split(self.name, self.root, train=False, download=self.download)
        val_idx = val_idx[: self.eval_subset] if self.eval_subset else val_idx
        test_n = self.eval_subset or len(test_x)
        self.tensors = {
            "train": (self._normalize(x[train_idx]), y[train_idx]),
            "val": (self._normalize(x[val_idx]), y[val_idx]),
            "test": (self._normalize(test_x[:test_n]), test_y[:test_n]),
        }

    def to(self, device: torch.device | str) -> VisionDataModule:
        """Keep the data resident on `device`, so no batch crosses the host-device boundary."""
        self.device = torch.device(device)
        self.tensors = {k: (x.to(self.device), y.to(self.device)) for k, (x, y) in self.tensors.items()}
        return self

    def _global_step(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_step if trainer is not None else 0

    def train_dataloader(self) -> BatchStream:
        x, y = self.tensors["train"]
        return BatchStream(x, y, self.batch_size, self.seed, end=self.iterations,
                           first=lambda: self.start_step + self._global_step())

    def val_dataloader(self) -> list[EvalBatches]:
        """Two loaders: index 0 is the validation split, index 1 the test split (both tracked over training)."""
        return [EvalBatches(*self.tensors[split], self.eval_batch_size) for split in ("val", "test")]

    def test_dataloader(self) -> EvalBatches:
        return EvalBatches(*self.tensors["test"], self.eval_batch_size)
