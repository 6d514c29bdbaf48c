"""Side-by-side GPU timing: variants interleaved, CUDA events, median of many reps, optional graph replay.

Each variant is a callable ``f(i)`` that runs one call on input/weight set ``i`` (sets rotate so that no
repetition finds its operands in L2). One timed "replay" runs every set once; the time per call is the replay
time over the number of sets. With ``mode="graph"`` the replay is a captured CUDA graph (no host overhead:
the kernels' own time); with ``"eager"`` it is a Python loop (what an uncaptured model pays).

`DEVICE` is where the benchmarks put their tensors ("cuda"); the CPU tests set it to "cpu", and then timing
is a plain wall-clock loop (mode "cpu") so the benchmarks' bookkeeping can be tested without a GPU.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

__all__ = ["DEVICE", "Timing", "sync", "time_side_by_side"]

DEVICE = "cuda"


def sync() -> None:
    """Wait for the device (a no-op on the CPU)."""
    if DEVICE != "cpu":
        torch.cuda.synchronize()


@dataclass
class Timing:
    """Per-call milliseconds of one variant over all reps, and how they were obtained."""

    ms: list[float] = field(default_factory=list)
    mode: str = "graph"
    error: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.ms) if self.ms else float("nan")


def _replay_fn(f: Callable[[int], object], nsets: int, mode: str) -> tuple[Callable[[], None], str, str]:
    def loop() -> None:
        for i in range(nsets):
            f(i)

    # Two eager rounds first: plan building, cuSPARSELt tuning and cuBLAS heuristics stay out of the numbers.
    loop()
    loop()
    torch.cuda.synchronize()
    if mode == "eager":
        return loop, "eager", ""
    try:
        g = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loop()  # warm-up on the capture stream, as torch.cuda.graphs recommends
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        with torch.cuda.graph(g, capture_error_mode="relaxed"):
            loop()
        g.replay()
        torch.cuda.synchronize()
        return g.replay, "graph", ""
    except Exception as e:  # noqa: BLE001 - a library that cannot be captured is a finding, not a crash
        torch.cuda.synchronize()
        msg = f"graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:160]}); timed eagerly"
        log.warning(msg)
        return loop, "eager", msg


def time_side_by_side(variants: dict[str, Callable[[int], object]], nsets: int, mode: str = "graph",
                      min_reps: int = 10, max_reps: int = 200, target_s: float = 0.4) -> dict[str, Timing]:
    """Time every variant interleaved; reps are chosen so that each variant runs about `target_s` seconds."""
    if DEVICE == "cpu":
        return _time_cpu(variants, nsets, min_reps)
    fns: dict[str, Callable[[], None]] = {}
    out: dict[str, Timing] = {}
    for name, f in variants.items():
        fn, used, err = _replay_fn(f, nsets, mode)
        fns[name] = fn
        out[name] = Timing(mode=used, error=err)
    # One untimed round of each to measure roughly how long a replay takes.
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    slowest = 0.0
    for fn in fns.values():
        t0.record()
        fn()
        t1.record()
        t1.synchronize()
        slowest = max(slowest, t0.elapsed_time(t1) / 1e3)
    reps = int(min(max_reps, max(min_reps, target_s / max(slowest, 1e-6))))
    names = list(fns)
    events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {n: [] for n in names}
    for r in range(reps):
        # Rotate the order each rep so no variant always follows the same neighbour (clock/thermal drift).
        k = r % len(names)
        for n in names[k:] + names[:k]:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fns[n]()
            b.record()
            events[n].append((a, b))
    torch.cuda.synchronize()
    for n in names:
        out[n].ms = [a.elapsed_time(b) / nsets for a, b in events[n]]
    return out


def _time_cpu(variants: dict[str, Callable[[int], object]], nsets: int, reps: int) -> dict[str, Timing]:
    """Wall-clock loop for the CPU tests: exceptions propagate as they would from the GPU path's warm-up."""
    import time

    out = {}
    for name, f in variants.items():
        for i in range(nsets):
            f(i)
        ms = []
        for _ in range(min(reps, 3)):
            t0 = time.perf_counter()
            for i in range(nsets):
                f(i)
            ms.append((time.perf_counter() - t0) * 1e3 / nsets)
        out[name] = Timing(ms=ms, mode="cpu")
    return out
