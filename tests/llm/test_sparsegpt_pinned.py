"""SparseGPT's outputs are pinned bit for bit on seeded layers, so a refactor cannot move a single weight.

tests/fixtures/sparsegpt_pinned.pt holds, per case, the inputs and the ``(W_new, mask)`` that
``sparsegpt_prune`` returned when the file was written (the commit is stored with it). It was written on the
CPU with one thread; rewrite it only for a deliberate change of results:
``PYTHONPATH=. python tests/llm/test_sparsegpt_pinned.py --write``.

Bit-for-bit equality holds only on the kind of CPU that wrote the file: BLAS and LAPACK pick their kernels by
processor (seen: the same torch build gave the same masks but different low bits on an AMD EPYC with AVX-512
than on the machine that first wrote the pins). The file records the processor (`cpu`); elsewhere the test
demands identical masks and weights equal to a relative 1e-5 (1e-3 in float16).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import cpu_identity

from lottery.llm import sparsegpt_prune

PINNED = Path(__file__).parent.parent / "fixtures" / "sparsegpt_pinned.pt"


def _layer(seed: int, rows: int, cols: int, dead: int = 0, rank: int | None = None):
    """A weight and a Hessian 2 X X^T / N from correlated inputs; ``dead`` inputs never fire."""
    g = torch.Generator().manual_seed(seed)
    tokens = rank or 4 * cols
    mixing = torch.eye(cols) + torch.randn(cols, cols, generator=g) / cols**0.5
    X = (mixing @ torch.randn(cols, tokens, generator=g)) * torch.exp(torch.randn(cols, 1, generator=g))
    X[:dead] = 0
    return torch.randn(rows, cols, generator=g), 2 * X @ X.T / tokens


def cases() -> dict[str, dict]:
    """name -> keyword arguments of sparsegpt_prune (W and H included)."""
    out: dict[str, dict] = {}
    W, H = _layer(0, 16, 96)
    out["unstructured_50"] = dict(W=W, H=H, sparsity=0.5, blocksize=32)
    out["unstructured_50_one_block"] = dict(W=W, H=H, sparsity=0.5)
    out["2:4"] = dict(W=W, H=H, sparsity=0.5, n=2, m=4, blocksize=32)
    out["4:8"] = dict(W=W, H=H, sparsity=0.5, n=4, m=8, blocksize=32)
    out["1:4_one_block"] = dict(W=W, H=H, sparsity=0.0, n=1, m=4)
    W, H = _layer(1, 24, 80)
    out["unstructured_70_partial_block"] = dict(W=W, H=H, sparsity=0.7, blocksize=32)
    out["2:4_partial_block"] = dict(W=W, H=H, sparsity=0.5, n=2, m=4, blocksize=32)
    keep = torch.rand(W.shape, generator=torch.Generator().manual_seed(2)) > 0.4
    out["fixed_mask"] = dict(W=W, H=H, sparsity=0.0, blocksize=32, mask=keep)
    W, H = _layer(3, 8, 48, dead=5)
    out["dead_inputs_half"] = dict(W=W.half(), H=H, sparsity=0.5, blocksize=16, percdamp=0.05)
    out["float64"] = dict(W=W.double(), H=H.double(), sparsity=0.5, n=2, m=4, blocksize=16)
    W, H = _layer(4, 8, 32, rank=8)  # rank-deficient H and no damping: the retry path adds damping
    out["singular_retry"] = dict(W=W, H=H, sparsity=0.5, blocksize=16, percdamp=0.0)
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits (so -0.0 != 0.0 and NaN payloads count)."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(cases()))
def test_sparsegpt_reproduces_pinned_outputs_bitwise(name: str) -> None:
    pinned = torch.load(PINNED, weights_only=True)["cases"][name]
    kwargs = {**cases()[name], "W": pinned["W"], "H": pinned["H"]}
    if "mask" in kwargs:
        kwargs["mask"] = pinned["mask_in"]
    W_new, mask = sparsegpt_prune(**kwargs)
    assert W_new.dtype == pinned["W_new"].dtype and mask.dtype == torch.bool
    assert torch.equal(mask, pinned["mask"]), f"{name}: {int((mask != pinned['mask']).sum())} mask entries differ"
    if torch.load(PINNED, weights_only=True).get("cpu") == cpu_identity():
        differ = int((_bits(W_new) != _bits(pinned["W_new"])).sum())
        assert differ == 0, f"{name}: {differ} weights differ in their bits"
    else:  # another processor: other BLAS kernels, other rounding (see the module docstring)
        rtol = 1e-3 if W_new.dtype == torch.float16 else 1e-5
        torch.testing.assert_close(W_new, pinned["W_new"], rtol=rtol, atol=rtol * float(pinned["W_new"].abs().max()))


def _write() -> None:
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    data: dict = {"commit": commit, "torch": str(torch.__version__), "machine": platform.processor() or platform.machine(),
                  "cpu": cpu_identity(),
                  "cases": {}}
    for name, kwargs in cases().items():
        W_new, mask = sparsegpt_prune(**kwargs)
        entry = {"W": kwargs["W"], "H": kwargs["H"], "W_new": W_new, "mask": mask}
        if "mask" in kwargs:
            entry["mask_in"] = kwargs["mask"]
        data["cases"][name] = entry
    torch.save(data, PINNED)
    print(f"wrote {len(data['cases'])} cases to {PINNED} (commit {commit[:10]})")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/llm/test_sparsegpt_pinned.py --write")
    _write()
