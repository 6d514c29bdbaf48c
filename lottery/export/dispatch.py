"""Dense or 2:4 per (shape, tokens bucket, dtype, operand layout), from measured times: never slower than dense.

2:4 wins big matmuls, but for skinny (decode) shapes cuSPARSELt's kernels can lose to cuBLAS (bf16 on an H200:
0.55–1.0x). A `DispatchTable` holds, for every measured point, the faster of the two; a layer consults it per
call (`lottery.export.cslt.TransposedLinear`). Token counts fall into power-of-two buckets; a count whose bucket
was not measured takes the nearest measured bucket of the same (shape, dtype, layout), and a shape never
measured defaults to 2:4. The table round-trips through JSON so an exported model can carry it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["DispatchTable", "bucket"]

CHOICES = ("dense", "sparse")


def bucket(tokens: int) -> int:
    """The power-of-two bucket of a token count (1, 2, 4, ...; 3 -> 4, 2048 -> 2048)."""
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    return 1 << (tokens - 1).bit_length()


def _dt(dtype: torch.dtype | str) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class DispatchTable:
    """(out, in, tokens bucket, dtype, layout) -> "dense" / "sparse", with the times that decided it."""

    entries: dict[tuple[int, int, int, str, str], str] = field(default_factory=dict)
    times: dict[tuple[int, int, int, str, str], tuple[float, float]] = field(default_factory=dict)

    def record(self, n: int, k: int, tokens: int, dtype: torch.dtype | str, layout: str, dense_ms: float,
               sparse_ms: float) -> str:
        """Store one measurement; 2:4 is chosen only when it was measured strictly faster (NaN: dense)."""
        key = (n, k, bucket(tokens), _dt(dtype), layout)
        choice = "sparse" if sparse_ms < dense_ms else "dense"
        self.entries[key] = choice
        self.times[key] = (float(dense_ms), float(sparse_ms))
        return choice

    def choose(self, n: int, k: int, tokens: int, dtype: torch.dtype | str, layout: str) -> str:
        """The choice for this call (see the module docstring for unmeasured points)."""
        dt, bk = _dt(dtype), bucket(tokens)
        hit = self.entries.get((n, k, bk, dt, layout))
        if hit is not None:
            return hit
        near = [(abs(math.log2(key[2]) - math.log2(bk)), -key[2], c) for key, c in self.entries.items()
                if key[:2] == (n, k) and key[3:] == (dt, layout)]
        return min(near)[2] if near else "sparse"

    def to_json(self) -> str:
        rows = [{"out": k[0], "in": k[1], "bucket": k[2], "dtype": k[3], "layout": k[4], "choice": c,
                 "dense_ms": self.times.get(k, (math.nan,) * 2)[0], "sparse_ms": self.times.get(k, (math.nan,) * 2)[1]}
                for k, c in sorted(self.entries.items())]
        return json.dumps(rows, indent=1)

    @classmethod
    def from_json(cls, text: str) -> DispatchTable:
        t = cls()
        for r in json.loads(text):
            key = (int(r["out"]), int(r["in"]), int(r["bucket"]), str(r["dtype"]), str(r["layout"]))
            if r["choice"] not in CHOICES:
                raise ValueError(f"dispatch table: unknown choice {r['choice']!r}")
            t.entries[key] = r["choice"]
            t.times[key] = (float(r.get("dense_ms", math.nan)), float(r.get("sparse_ms", math.nan)))
        return t

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> DispatchTable:
        return cls.from_json(Path(path).read_text())
