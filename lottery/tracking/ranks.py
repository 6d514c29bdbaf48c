"""Which process may write: under DDP every rank runs the job, but only global rank 0 touches the run store
and the trackers. Read from the environment each time, because Lightning sets it when it launches ranks."""

from __future__ import annotations

import os


def process_rank() -> int:
    """The global rank of this process (0 when not distributed)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key) is not None:
            return int(os.environ[key])
    return 0


def is_writer() -> bool:
    return process_rank() == 0
