"""Shared fixtures: an isolated environment (no network, nothing written outside tmp_path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import SHARED_DATA, USER_CACHE, has_mnist, locate_mnist

# The session's answer of locate_mnist (asked at most once, by the first test that needs MNIST).
_MNIST: list[tuple[Path | None, str]] = []


def _data_root() -> Path:
    """Where LOTTERY_DATA points: the folder already holding MNIST (shared or cached), else the shared one."""
    return USER_CACHE if not has_mnist(SHARED_DATA) and has_mnist(USER_CACHE) else SHARED_DATA


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
    monkeypatch.setenv("LOTTERY_DATA", str(_data_root()))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def mnist_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The data root holding MNIST: shared, cached, or fetched once when online; the test is skipped otherwise."""
    if not _MNIST:
        _MNIST.append(locate_mnist(SHARED_DATA, USER_CACHE))
    root, why = _MNIST[0]
    if root is None:
        pytest.skip(why)
    monkeypatch.setenv("LOTTERY_DATA", str(root))
    return root


def pytest_terminal_summary(terminalreporter) -> None:
    """Say why the MNIST tests did not run (offline and absent), or that MNIST was downloaded this session."""
    if _MNIST and (_MNIST[0][0] is None or "downloaded" in _MNIST[0][1]):
        terminalreporter.write_sep("-", "MNIST")
        terminalreporter.write_line(_MNIST[0][1])


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Two threads on a loaded 2-core machine make tiny ops erratic (and bitwise pins thread-dependent)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
