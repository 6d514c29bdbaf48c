"""The Triton glue kernels on CPU under TRITON_INTERPRET=1 (one subprocess: the variable must be set before
triton is imported), each against its torch reference; and the resolution of ``impl``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lottery.export import fused

pytest.importorskip("triton")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def checks() -> dict[str, float]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.run([sys.executable, str(HERE / "triton_cpu_checks.py")], env=env, capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


# fp32 and fp16 match the torch ops bit for bit or to fp32 rounding. Triton's interpreter converts fp32 to bf16
# by truncation (checked: every value equals the truncated one), torch rounds to nearest: RoPE's four chained
# roundings then differ by up to ~2 bf16 ulps of the largest value. The GPU kernels round to nearest.
TOL = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 2 ** -6}


@pytest.mark.parametrize("op", ["transpose", "transpose_strided", "transpose_tile", "add_transposed",
                                "rms_norm_cols", "rms_norm_cols_view", "silu_mul"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_kernel_matches_torch(checks, op, dtype):
    assert checks[f"{op}/{dtype}"] <= TOL[dtype]


def test_transposes_are_exact(checks):
    assert all(v == 0.0 for k, v in checks.items() if k.startswith("transpose"))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_rope_heads_into_cache_slice(checks, dtype):
    keys = [k for k in checks if k.startswith(f"rope_heads/{dtype}/")]
    assert len(keys) == 8
    for k in keys:
        if k.endswith("/untouched"):
            assert checks[k] == 0.0, k  # nothing outside the cache slice is written
        else:
            assert checks[k] <= TOL[dtype], (k, checks[k])


def test_tiny_model_with_triton_glue(checks):
    for layout in ("feature", "token", "feature_fused_cache"):
        assert checks[f"model/{layout}/prefill"] <= 1e-5
        assert checks[f"model/{layout}/decode"] <= 1e-5


def test_impl_resolution():
    x = torch.zeros(2, 2)
    assert fused.resolve_impl("auto", x) == "torch"  # a CPU tensor never auto-selects the interpreter
    assert fused.resolve_impl("triton", x) == "triton"
    with pytest.raises(ValueError):
        fused.resolve_impl("cuda", x)
    with pytest.raises(ValueError):
        fused.transpose(torch.zeros(2, 2, 2))
