"""The run store: one folder per run, named by a stable hash of the result-changing part of its config.

Layout of a run folder (every file written atomically):
    config.yaml          the full resolved config of the first invocation
    init.pt              θ0, the initial weights
    rewind.pt            θk, the weights at the rewind point (only when rewinding to iteration/epoch k)
    level_NN/mask.pt     the level's mask (parameter name -> bool tensor)
    level_NN/start.pt    the weights the level started from (the ticket: θ0 ⊙ mask or θk ⊙ mask)
    level_NN/last.ckpt   Lightning checkpoint for resuming a killed level (deleted when the level ends);
                         replicate.ckpt with training.engine=batched
    level_NN/final.pt    the trained weights
    level_NN/metrics.json  the level's metrics; written last, so its presence marks the level done
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lottery.errors import StoreError
from lottery.tracking.atomic import load_json, load_torch, save_json, save_text, save_torch
from lottery.tracking.ranks import is_writer

log = logging.getLogger(__name__)

# Dotted keys that do not change results: logging, paths, progress bars and checkpoint cadence, and whether
# engine=batched replays its step as a CUDA graph (the same kernels; only Adam's bias correction is computed on
# the device). Control branches are stored inside the run they derive from, and `seeds` only says which runs
# one command makes (each run's own `seed` is hashed), so neither is part of a run's hash.
HASH_EXCLUDED = ("name", "logger", "store", "progress_bar", "data.root", "data.download",
                 "training.checkpoint_every", "training.cuda_graph", "branch", "seeds")

# Keys added to the schema after runs were already stored, with the value that every earlier run implicitly
# had. While a key holds that value it is left out of the hash, so adding an option never moves the folder of
# an existing config; a run that sets it to anything else gets a new hash. Add new keys here, never remove one.
HASH_NEUTRAL_DEFAULTS: dict[str, Any] = {
    "model.gguf_file": None,  # one-shot: no GGUF file (issue 19)
    "calibration.corpus": "file",  # one-shot: calibrate on calibration.text (issue 19)
    "pruning.score": "magnitude",  # issue 14: pruning scores; the four keys below only matter for other scores
    "pruning.score_batches": 10,
    "pruning.synflow_rounds": 100,
    "pruning.prune_at": "auto",
    "prune.allocation": "uniform",  # one-shot: per-block sparsity allocation (issue 15); owl_* only matter for owl
    "prune.owl_m": 5.0,
    "prune.owl_lambda": 0.08,
    "training.precision": "32-true",  # issue 18: every earlier run trained in full fp32
}


def _parent(data: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    """The dict holding the last key of `dotted`, and that key (None if a parent is absent or not a dict)."""
    *parents, leaf = dotted.split(".")
    node: Any = data
    for key in parents:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return (node if isinstance(node, dict) else None), leaf


def hashable_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved config without the keys in HASH_EXCLUDED, and without new keys at their neutral default."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else json.loads(json.dumps(cfg))
    data.pop("hydra", None)
    for dotted in HASH_EXCLUDED:
        node, leaf = _parent(data, dotted)
        if node is not None:
            node.pop(leaf, None)
    for dotted, neutral in HASH_NEUTRAL_DEFAULTS.items():
        node, leaf = _parent(data, dotted)
        if node is not None and leaf in node and node[leaf] == neutral:
            node.pop(leaf)
    return data


def config_hash(cfg: DictConfig | dict) -> str:
    """A stable 12-hex-digit hash: sha256 of the canonical JSON of `hashable_config(cfg)`."""
    canonical = json.dumps(hashable_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class RunStore:
    """The folder of one run. Holding it takes an exclusive lock, so two processes never share a run.

    Under DDP only global rank 0 writes (and locks); the other ranks read and compute in memory.
    """

    def __init__(self, root: str | Path, cfg: DictConfig, prefix: str = "run"):
        self.hash = config_hash(cfg)
        self.path = Path(root) / f"{prefix}_{self.hash}"
        self.cfg = cfg
        self.writer = is_writer()
        self._lock_file = None

    def open(self) -> RunStore:
        """Create the folder, take the lock and record the config (once); remove stale temporary files."""
        if not self.writer:
            return self
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot create the run folder {self.path} ({err.strerror}); set store.root to a "
                             "writable folder") from None
        if not os.access(self.path, os.W_OK):
            raise StoreError(f"the run folder {self.path} is not writable; set store.root to a writable folder")
        self._lock_file = open(self.path / ".lock", "w")  # noqa: SIM115  (held for the run's lifetime)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise StoreError(f"another process is running in {self.path}; wait for it to finish") from None
        if not (self.path / "config.yaml").exists():
            save_text(OmegaConf.to_yaml(self.cfg, resolve=True), self.path / "config.yaml")
        for stale in self.path.rglob(".*.tmp"):  # a killed process's unfinished write; never a visible file
            stale.unlink(missing_ok=True)
        return self

    def close(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> RunStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def file(self, name: str) -> Path:
        return self.path / name

    def level(self, level: int) -> Path:
        return self.path / f"level_{level:02d}"

    def level_done(self, level: int) -> bool:
        return (self.level(level) / "metrics.json").exists()

    def verify(self, on_corrupt: str = "error") -> list[Path]:
        """Check that every stored file loads. A corrupt one raises StoreError naming it, or with
        on_corrupt="redo" the level (or branch) folder holding it is deleted so the run redoes it
        (rewind.pt takes level 0 with it). Returns what was deleted."""
        removed: list[Path] = []
        if not self.writer or not self.path.exists():
            return removed
        for path in sorted(self.path.rglob("*")):
            if not path.is_file() or path.suffix not in (".pt", ".ckpt", ".json") or "wandb" in path.parts:
                continue
            if any(p in removed or p in path.parents for p in removed):
                continue
            try:
                load_json(path) if path.suffix == ".json" else load_torch(path)
            except StoreError:
                if on_corrupt != "redo":
                    raise
                if path.parent == self.path:  # a run-level file; θk belongs to level 0
                    victim = self.level(0) if path.name == "rewind.pt" else path
                elif path.suffix == ".ckpt":  # only the resume point: the level restarts from its beginning
                    victim = path
                else:
                    victim = path.parent
                log.warning("%s is corrupt; deleting %s to redo it", path, victim)
                if victim.is_dir():
                    shutil.rmtree(victim)
                else:
                    victim.unlink()
                if path.name == "rewind.pt":
                    path.unlink(missing_ok=True)
                removed.append(victim)
        return removed

    def save_torch(self, obj: Any, path: Path) -> None:
        if self.writer:
            save_torch(obj, path)

    def save_json(self, obj: Any, path: Path) -> None:
        if self.writer:
            save_json(obj, path)

    def load_or_save(self, path: Path, make: Any) -> Any:
        """Load `path` if an earlier (possibly killed) run wrote it, else compute it (and write it, on rank 0)."""
        if path.exists():
            return load_torch(path)
        obj = make()
        self.save_torch(obj, path)
        return obj
