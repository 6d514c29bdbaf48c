"""MNIST-family loading: the real files, the validation split, the seeded resumable batch order, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lottery.data import BatchStream, VisionDataModule, epoch_permutation
from lottery.data.vision import DEBIAN_FASHION_MNIST
from lottery.errors import DataError


def test_mnist_split_and_normalisation(mnist_root) -> None:
    dm = VisionDataModule("mnist", str(mnist_root), download=False)
    dm.setup()
    (tx, ty), (vx, vy), (sx, sy) = dm.tensors["train"], dm.tensors["val"], dm.tensors["test"]
    assert (len(tx), len(vx), len(sx)) == (55000, 5000, 10000)
    assert tx.shape[1:] == (1, 28, 28) and tx.dtype == torch.float32
    assert abs(tx.mean().item()) < 0.05 and abs(tx.std().item() - 1) < 0.05
    assert set(vy.unique().tolist()) == set(range(10))
    # The hold-out is the same for every run seed.
    other = VisionDataModule("mnist", str(mnist_root), download=False, seed=7)
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
        VisionDataModule("mnist", str(tmp_path / "empty"), download=True).setup()
    message = str(info.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message and "data.root" in message
    with pytest.raises(DataError, match="data.download=true"):
        VisionDataModule("mnist", str(tmp_path / "empty"), download=False).setup()


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian(tmp_path: Path) -> None:
    dm = VisionDataModule("fashion_mnist", str(tmp_path / "data"), download=False, eval_subset=100)
    dm.setup()
    assert len(dm.tensors["train"][0]) == 55000 and len(dm.tensors["test"][0]) == 100
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
