"""Vision datasets (MNIST, Fashion-MNIST, CIFAR-10, synthetic CIFAR) held in memory, as a LightningDataModule."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchvision import datasets

from lottery.data.augment import crop_flip
from lottery.data.stream import BatchStream, EvalBatches
from lottery.errors import DataError

log = logging.getLogger(__name__)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CROP_PADDING = 4  # augmentation: random crops of a 4-pixel padded image (the standard CIFAR recipe)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the config validator need to know about a dataset before loading it."""

    loader: Callable[[str, bool, bool], tuple[torch.Tensor, torch.Tensor]]  # (root, train, download) -> (x, y)
    folder: str
    input_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _offline_error(name: str, where: Path, download: bool, err: BaseException | None = None) -> DataError:
    if not download:
        return DataError(f"{name} is not in {where}; put the files there, point data.root (or LOTTERY_DATA) "
                         "at a folder that has them, or set data.download=true")
    return DataError(f"{name} is not in {where} and downloading it failed ({type(err).__name__}); when offline, "
                     f"copy the files into {where} or point data.root (or LOTTERY_DATA) at a folder that has them")


def _torchvision(cls: type, name: str, folder: str, root: str, train: bool, download: bool) -> tuple:
    """Load through torchvision, downloading only when allowed and needed; returns (uint8 images, int64 labels)."""
    try:
        ds = cls(root, train=train, download=False)
    except RuntimeError:
        if not download:
            raise _offline_error(name, Path(root) / folder, download) from None
        try:
            ds = cls(root, train=train, download=True)
        except Exception as err:  # torchvision raises several kinds (URLError, RuntimeError, OSError)
            raise _offline_error(name, Path(root) / folder, download, err) from None
    data, targets = ds.data, ds.targets
    if not torch.is_tensor(data):  # CIFAR keeps numpy HWC images and a list of labels
        data = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
        targets = torch.tensor(targets)
    return data, targets.long()


def _synthetic_cifar(root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Small CIFAR-shaped data (uint8 [N, 3, 32, 32], 10 classes) for tests and smoke runs, no files needed.

    Each class is a fixed random prototype plus noise, so a network can learn it above chance.
    """
    g = torch.Generator().manual_seed(1234 if train else 4321)
    prototypes = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(99)) * 255
    n = 1500 if train else 300
    labels = torch.randint(0, 10, (n,), generator=g)
    noise = torch.rand(n, 3, 32, 32, generator=g) * 255
    return (0.35 * prototypes[labels] + 0.65 * noise).round().to(torch.uint8), labels


def _mnist_family(cls: type, name: str, folder: str) -> Callable[[str, bool, bool], tuple]:
    def load(root: str, train: bool, download: bool) -> tuple:
        raw = Path(root) / folder / "raw"
        if name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir() and not any(raw.glob("*-ubyte")):
            _copy_debian_fashion_mnist(raw)
        return _torchvision(cls, name, f"{folder}/raw", root, train, download)

    return load


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(_mnist_family(datasets.MNIST, "mnist", "MNIST"), "MNIST/raw", (1, 28, 28), 10, 60000,
                         (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo(_mnist_family(datasets.FashionMNIST, "fashion_mnist", "FashionMNIST"),
                                 "FashionMNIST/raw", (1, 28, 28), 10, 60000, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(partial(_torchvision, datasets.CIFAR10, "cifar10", "cifar-10-batches-py"),
                           "cifar-10-batches-py", (3, 32, 32), 10, 50000, CIFAR_MEAN, CIFAR_STD),
    "synthetic_cifar": DatasetInfo(_synthetic_cifar, "", (3, 32, 32), 10, 1500, CIFAR_MEAN, CIFAR_STD),
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
    """Load one split as (uint8 images [N, C, H, W] or [N, H, W], int64 labels)."""
    return DATASETS[name].loader(root, train, download)


@dataclass(frozen=True)
class DataSpec:
    """Which examples a run sees (the `data` config group): the dataset, where it lives, the validation
    hold-out (the last `val_size` examples of a permutation seeded by `split_seed`), optional subsets, and
    whether training batches are augmented (random crop with padding 4 and horizontal flip)."""

    name: str
    root: str
    download: bool = True
    val_size: int = 5000
    split_seed: int = 0
    train_subset: int | None = None
    eval_subset: int | None = None
    augment: bool = False

    @classmethod
    def from_config(cls, data: Any) -> DataSpec:
        """The spec of a `data` config group (a DictConfig or any object with these attributes)."""
        return cls(**{f.name: getattr(data, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class LoaderSpec:
    """How batches come: `batch_size` training examples in the order of `seed`, from absolute iteration
    `start_step` to `iterations`; evaluation in batches of `eval_batch_size`."""

    batch_size: int = 60
    seed: int = 0
    iterations: int = 1
    start_step: int = 0
    eval_batch_size: int = 1000


DEFAULT_LOADER = LoaderSpec()


class VisionDataModule(L.LightningDataModule):
    """Train/validation/test tensors in memory; training batches come from a seeded `BatchStream`.

    The validation set is the last `val_size` examples of a fixed permutation (seeded by `split_seed`)
    of the official training set, so it is the same for every run seed.
    """

    def __init__(self, spec: DataSpec, loader: LoaderSpec = DEFAULT_LOADER):
        super().__init__()
        # Typed groups, checked: two specs cannot be swapped, and no positional list can be misordered.
        if not isinstance(spec, DataSpec) or not isinstance(loader, LoaderSpec):
            raise TypeError(f"VisionDataModule takes a DataSpec and a LoaderSpec, not {type(spec).__name__} and "
                            f"{type(loader).__name__}")
        if spec.name not in DATASETS:
            raise DataError(f"data.name={spec.name!r} is unknown; choose one of {', '.join(sorted(DATASETS))}")
        self.info = DATASETS[spec.name]
        self.spec, self.loader = spec, loader
        self.name = spec.name  # LightningDataModule's own name attribute
        self.device = torch.device("cpu")
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def augment(self) -> bool:
        """Whether training batches are cropped and flipped."""
        return self.spec.augment

    @property
    def eval_batch_size(self) -> int:
        return self.loader.eval_batch_size

    @property
    def num_train(self) -> int:
        """Training examples after the validation hold-out and `train_subset`."""
        n = self.info.num_train - self.spec.val_size
        return min(n, self.spec.train_subset) if self.spec.train_subset else n

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train // self.loader.batch_size

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        x = x.unsqueeze(1) if x.dim() == 3 else x
        mean, std = torch.tensor(self.info.mean).view(1, -1, 1, 1), torch.tensor(self.info.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def setup(self, stage: str | None = None) -> None:
        if self.tensors:
            return
        d = self.spec
        x, y = load_split(d.name, d.root, train=True, download=d.download)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(d.split_seed))
        train_idx, val_idx = order[: len(x) - d.val_size], order[len(x) - d.val_size:]
        train_idx = train_idx[: self.num_train]
        test_x, test_y = load_split(d.name, d.root, train=False, download=d.download)
        val_idx = val_idx[: d.eval_subset] if d.eval_subset else val_idx
        test_n = d.eval_subset or len(test_x)
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

    def for_level(self, start_step: int, iterations: int, seed: int | None = None) -> VisionDataModule:
        """A module over the same loaded data whose training stream runs from `start_step` to `iterations` in
        the order of `seed` (None: this module's seed). This module is left as it is."""
        loader = replace(self.loader, seed=self.loader.seed if seed is None else seed, iterations=iterations,
                         start_step=start_step)
        level = VisionDataModule(self.spec, loader)
        level.tensors, level.device = self.tensors, self.device
        return level

    def _global_step(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_step if trainer is not None else 0

    def crop_fill(self) -> torch.Tensor:
        """The padding value of augmentation crops, per channel: a black pixel after normalisation."""
        return -torch.tensor(self.info.mean) / torch.tensor(self.info.std)

    def train_dataloader(self) -> BatchStream:
        x, y = self.tensors["train"]
        augment = partial(crop_flip, padding=CROP_PADDING, fill=self.crop_fill()) if self.augment else None
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        try:
            return BatchStream(x, y, self.loader.batch_size, self.loader.seed, end=self.loader.iterations,
                               first=lambda: self.loader.start_step + self._global_step(), augment=augment,
                               rank=rank, world_size=world)
        except ValueError as err:
            raise DataError(str(err)) from None

    def val_dataloader(self) -> list[EvalBatches]:
        """Two loaders: index 0 is the validation split, index 1 the test split (both tracked over training)."""
        return [EvalBatches(*self.tensors[split], self.eval_batch_size) for split in ("val", "test")]

    def test_dataloader(self) -> EvalBatches:
        return EvalBatches(*self.tensors["test"], self.eval_batch_size)
