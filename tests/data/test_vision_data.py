"""MNIST-family loading: the real files, the validation split, the seeded resumable batch order, clear errors."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lottery.data import BatchStream, DataSpec, LoaderSpec, VisionDataModule, epoch_permutation
from lottery.data.vision import DEBIAN_FASHION_MNIST
from lottery.errors import DataError
from lottery.imp.schema import DataConfig


def test_mnist_split_and_normalisation(mnist_root) -> None:
    dm = VisionDataModule(DataSpec("mnist", str(mnist_root), download=False))
    dm.setup()
    (tx, _), (vx, vy), (sx, _) = dm.tensors["train"], dm.tensors["val"], dm.tensors["test"]
    assert (len(tx), len(vx), len(sx)) == (55000, 5000, 10000)
    assert tx.shape[1:] == (1, 28, 28) and tx.dtype == torch.float32
    assert abs(tx.mean().item()) < 0.05 and abs(tx.std().item() - 1) < 0.05
    assert set(vy.unique().tolist()) == set(range(10))
    # The hold-out is the same for every run seed.
    other = VisionDataModule(DataSpec("mnist", str(mnist_root), download=False), LoaderSpec(seed=7))
    other.setup()
    assert torch.equal(other.tensors["val"][0], vx)


def test_batch_stream_is_a_function_of_seed_and_step() -> None:
    x, y = torch.arange(100).float().unsqueeze(1), torch.arange(100)
    full = [b[1] for b in BatchStream(x, y, 10, seed=3, end=25)]
    assert len(full) == 25
    # Every epoch is a permutation of the data (the last partial batch would be dropped).
    assert sorted(torch.cat(full[:10]).tolist()) == list(range(100))
    assert torch.equal(torch.cat(full[:10]), epoch_permutation(100, 3, 0))
    # Starting in the middle (a resumed run) gives exactly the tail of the same stream.
    tail = [b[1] for b in BatchStream(x, y, 10, seed=3, end=25, first=lambda: 13)]
    assert all(torch.equal(a, b) for a, b in zip(full[13:], tail, strict=True))
    different = [b[1] for b in BatchStream(x, y, 10, seed=4, end=10)]
    assert not torch.equal(torch.cat(different), torch.cat(full[:10]))


def test_missing_files_offline_name_the_folder_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    from torchvision import datasets

    def offline(self, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    with pytest.raises(DataError) as info:
        VisionDataModule(DataSpec("mnist", str(tmp_path / "empty"), download=True)).setup()
    message = str(info.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message and "data.root" in message
    with pytest.raises(DataError, match="data.download=true"):
        VisionDataModule(DataSpec("mnist", str(tmp_path / "empty"), download=False)).setup()


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian(tmp_path: Path) -> None:
    dm = VisionDataModule(DataSpec("fashion_mnist", str(tmp_path / "data"), download=False, eval_subset=100))
    dm.setup()
    assert len(dm.tensors["train"][0]) == 55000 and len(dm.tensors["test"][0]) == 100
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_crop_flip_matches_per_image_slicing() -> None:
    from lottery.data.augment import crop_flip

    x = torch.randn(16, 3, 8, 8)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = crop_flip(x, torch.Generator().manual_seed(5), padding=2, fill=fill)
    # Brute force with the same random draws.
    g = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 5, (2, 16), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    for i in range(16):
        padded = fill.view(3, 1, 1).expand(3, 12, 12).clone()
        padded[:, 2:10, 2:10] = x[i]
        crop = padded[:, offsets[0, i]:offsets[0, i] + 8, offsets[1, i]:offsets[1, i] + 8]
        assert torch.equal(out[i], crop.flip(2) if flip[i] else crop)
    assert flip.any() and (~flip).any()


def test_augmented_stream_is_reproducible_and_resumable() -> None:
    loader = LoaderSpec(batch_size=50, seed=2, iterations=30)
    dm = VisionDataModule(DataSpec("synthetic_cifar", "", download=False, val_size=300, augment=True), loader)
    dm.setup()
    full = [b[0] for b in dm.train_dataloader()]
    again = [b[0] for b in dm.train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(full, again, strict=True))
    tail = [b[0] for b in dm.for_level(17, 30).train_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(full[17:], tail, strict=True))
    plain = VisionDataModule(DataSpec("synthetic_cifar", "", download=False, val_size=300, augment=False), loader)
    plain.setup()
    assert not torch.equal(next(iter(plain.train_dataloader()))[0], full[0])


def test_cifar10_offline_error(tmp_path: Path, monkeypatch) -> None:
    from torchvision import datasets

    def offline(self, *args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(datasets.CIFAR10, "download", offline)
    with pytest.raises(DataError) as info:
        VisionDataModule(DataSpec("cifar10", str(tmp_path), download=True)).setup()
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)


def test_data_spec_mirrors_the_data_config_group_and_specs_cannot_be_swapped() -> None:
    """Every `data` config key reaches the datamodule (a new key cannot be dropped silently), and the two
    typed groups are checked: swapped or positional arguments are refused."""
    assert [f.name for f in fields(DataSpec)] == [f.name for f in fields(DataConfig)]
    cfg = OmegaConf.structured(DataConfig(name="fashion_mnist", root="/r", val_size=7, split_seed=3, train_subset=9,
                                          eval_subset=5, augment=True))
    assert DataSpec.from_config(cfg) == DataSpec("fashion_mnist", "/r", True, 7, 3, 9, 5, True)
    with pytest.raises(TypeError, match="a DataSpec and a LoaderSpec"):
        VisionDataModule(LoaderSpec(), DataSpec("mnist", "/r"))
    with pytest.raises(TypeError, match="a DataSpec and a LoaderSpec"):
        VisionDataModule("mnist", "/r")
    with pytest.raises(DataError, match="data.name='nope' is unknown"):
        VisionDataModule(DataSpec("nope", "/r"))
    level = VisionDataModule(DataSpec("mnist", "/r"), LoaderSpec(batch_size=20, seed=4)).for_level(5, 9)
    assert level.loader == LoaderSpec(batch_size=20, seed=4, iterations=9, start_step=5)
