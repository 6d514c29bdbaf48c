"""Atomic file writes: write a temporary file in the target folder, fsync it, then rename over the target.

A reader (or a resumed run) therefore sees either the old file or the complete new one, never a torn write.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from lottery.errors import StoreError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` on a temporary file, then atomically move it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_torch(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def save_text(text: str, path: str | Path) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def load_torch(path: str | Path) -> Any:
    """torch.load that turns a corrupt or truncated file into a StoreError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise StoreError(f"{path} is corrupt or truncated ({type(err).__name__}); rerun with "
                         "store.on_corrupt=redo to redo the step that wrote it") from None


def load_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{path} is corrupt or truncated ({type(err).__name__}); rerun with "
                         "store.on_corrupt=redo to redo the step that wrote it") from None


def atomic_dir(target: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(folder)` on a temporary sibling folder, then rename it to `target`: a killed process never
    leaves half a folder under the target's name (the `.<name>.tmp` leftover is removed by the next attempt)."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
