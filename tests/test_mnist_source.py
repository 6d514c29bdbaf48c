"""How the tests find MNIST (tests/helpers.locate_mnist), with the network and the download mocked."""

from __future__ import annotations

from pathlib import Path

from helpers import locate_mnist


def put_mnist(root: Path) -> None:
    (root / "MNIST" / "raw").mkdir(parents=True)
    (root / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")


def never(*_: object) -> bool:
    raise AssertionError("must not be called")


def test_shared_folder_wins_without_asking_the_network(tmp_path: Path) -> None:
    put_mnist(tmp_path / "shared")
    put_mnist(tmp_path / "cache")
    assert locate_mnist(tmp_path / "shared", tmp_path / "cache", online=never, download=never)[0] == tmp_path / "shared"


def test_cached_copy_is_used_offline(tmp_path: Path) -> None:
    put_mnist(tmp_path / "cache")
    root, why = locate_mnist(tmp_path / "shared", tmp_path / "cache", online=never, download=never)
    assert root == tmp_path / "cache" and "cache" in why


def test_online_and_absent_downloads_once_into_the_cache(tmp_path: Path) -> None:
    calls: list[Path] = []

    def download(root: Path) -> None:
        calls.append(root)
        put_mnist(root)

    first = locate_mnist(tmp_path / "shared", tmp_path / "cache", online=lambda: True, download=download)
    second = locate_mnist(tmp_path / "shared", tmp_path / "cache", online=never, download=never)
    assert first[0] == second[0] == tmp_path / "cache" and "downloaded" in first[1]
    assert calls == [tmp_path / "cache"]  # the second session finds the cache


def test_offline_and_absent_skips_and_says_why(tmp_path: Path) -> None:
    root, why = locate_mnist(tmp_path / "shared", tmp_path / "cache", online=lambda: False, download=never)
    assert root is None and "offline" in why and "skipped" in why and str(tmp_path / "shared") in why


def test_a_download_that_yields_nothing_skips(tmp_path: Path) -> None:
    root, why = locate_mnist(tmp_path / "shared", tmp_path / "cache", online=lambda: True,
                             download=lambda root: None)
    assert root is None and "skipped" in why
