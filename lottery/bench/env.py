"""The machine and software a measurement ran on (GPU, driver, torch, CUDA, cuSPARSELt)."""

from __future__ import annotations

import datetime
import platform
import subprocess
from typing import Any

import torch

__all__ = ["environment"]


def environment() -> dict[str, Any]:
    """A flat dict of versions; fields that cannot be read are 'unknown'."""
    env: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
    }
    try:
        env["cusparselt_torch"] = torch.backends.cusparselt.version()
    except Exception:  # noqa: BLE001
        env["cusparselt_torch"] = "unknown"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, compute_capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1))
        try:
            from lottery.export.cusparselt import lt_library

            lib = lt_library()
            env["cusparselt_ctypes"] = lib.version
            env["cusparselt_path"] = lib.path
        except Exception as e:  # noqa: BLE001
            env["cusparselt_ctypes"] = f"unavailable: {e}"
    try:
        q = "driver_version,clocks.max.sm,clocks.sm,power.limit"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        if out:
            env.update(zip(["driver", "sm_clock_max_mhz", "sm_clock_now_mhz", "power_limit"],
                           [s.strip() for s in out[0].split(",")], strict=False))
    except (OSError, subprocess.SubprocessError):
        env["driver"] = "unknown"
    return env
