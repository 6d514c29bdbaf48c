"""Shared fixtures: an isolated environment (no network, nothing written outside tmp_path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import SHARED_DATA


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every cache, config and output folder the stack might write to into tmp_path."""
    for var, sub in [("HOME", "home"), ("XDG_CACHE_HOME", "home/.cache"), ("WANDB_DIR", "wandb"),
                     ("WANDB_CACHE_DIR", "wandb/cache"), ("WANDB_CONFIG_DIR", "wandb/config"),
                     ("WANDB_DATA_DIR", "wandb/data"), ("HF_HOME", "hf"), ("MPLCONFIGDIR", "mpl"),
                     ("LOTTERY_RUNS", "runs")]:
        if var != "LOTTERY_RUNS":
            (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOTTERY_DATA", str(SHARED_DATA))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def mnist_root() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST not found under {SHARED_DATA} (set LOTTERY_TEST_DATA)")
    return SHARED_DATA


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Two threads on a loaded 2-core machine make tiny ops erratic (and bitwise pins thread-dependent)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
