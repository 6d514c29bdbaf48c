"""Wanda's and magnitude pruning's outputs are pinned bit for bit on seeded layers (see test_sparsegpt_pinned.py).

Rewrite tests/fixtures/wanda_magnitude_pinned.pt only for a deliberate change of results:
``PYTHONPATH=. python tests/llm/test_wanda_magnitude_pinned.py --write``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lottery.llm import magnitude_prune, wanda_prune

PINNED = Path(__file__).parent.parent / "fixtures" / "wanda_magnitude_pinned.pt"
PRUNE = {"wanda": wanda_prune, "magnitude": magnitude_prune}


def cases() -> dict[str, tuple[str, dict]]:
    """name -> (method, keyword arguments); ties included (rounded weights) so the tie order is pinned too."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 64, generator=g)
    W_ties = (W * 4).round() / 4
    x_sq_norm = torch.exp(2 * torch.randn(64, generator=g))
    out: dict[str, tuple[str, dict]] = {}
    for label, weight in (("", W), ("_ties", W_ties)):
        out[f"magnitude_50{label}"] = ("magnitude", dict(W=weight, sparsity=0.5))
        out[f"magnitude_70_per_row{label}"] = ("magnitude", dict(W=weight, sparsity=0.7, per_row=True))
        out[f"magnitude_2:4{label}"] = ("magnitude", dict(W=weight, sparsity=0.0, n=2, m=4))
        out[f"wanda_50{label}"] = ("wanda", dict(W=weight, x_sq_norm=x_sq_norm, sparsity=0.5))
        out[f"wanda_4:8{label}"] = ("wanda", dict(W=weight, x_sq_norm=x_sq_norm, sparsity=0.0, n=4, m=8))
    out["wanda_half"] = ("wanda", dict(W=W.half(), x_sq_norm=x_sq_norm, sparsity=0.6))
    out["magnitude_half_1:4"] = ("magnitude", dict(W=W.half(), sparsity=0.0, n=1, m=4))
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("name", list(cases()))
def test_wanda_and_magnitude_reproduce_pinned_outputs_bitwise(name: str) -> None:
    pinned = torch.load(PINNED, weights_only=True)["cases"][name]
    method, kwargs = cases()[name]
    W_new, mask = PRUNE[method](**kwargs)
    assert torch.equal(kwargs["W"], pinned["W"])  # the seeded inputs themselves have not moved
    assert torch.equal(mask, pinned["mask"])
    assert torch.equal(_bits(W_new), _bits(pinned["W_new"]))


def _write() -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    data: dict = {"commit": commit, "torch": str(torch.__version__), "cases": {}}
    for name, (method, kwargs) in cases().items():
        W_new, mask = PRUNE[method](**kwargs)
        data["cases"][name] = {"W": kwargs["W"], "W_new": W_new, "mask": mask}
    torch.save(data, PINNED)
    print(f"wrote {len(data['cases'])} cases to {PINNED} (commit {commit[:10]})")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/llm/test_wanda_magnitude_pinned.py --write")
    _write()
