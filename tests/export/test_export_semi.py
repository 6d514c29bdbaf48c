"""2:4 export: the one-line refusal without CUDA, the CLI's exit code, and (GPU only) outputs vs masked dense."""

import pytest
import torch
from torch import nn

from lottery.bench.__main__ import main as bench_main
from lottery.export import SemiStructuredLinear, SemiStructuredUnavailable, require_semi_structured_gpu
from lottery.pruning.nm import nm_mask


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_refuses_without_cuda_in_one_line(no_cuda):
    with pytest.raises(SemiStructuredUnavailable) as err:
        require_semi_structured_gpu()
    msg = str(err.value)
    assert "\n" not in msg and "compute capability >= 8.0" in msg and "CUDA" in msg
    with pytest.raises(SemiStructuredUnavailable):
        SemiStructuredLinear(torch.zeros(16, 16, dtype=torch.float16))


def test_bench_cli_exits_2_without_cuda(no_cuda, capsys):
    assert bench_main(["sparse_speed", "--quick", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "compute capability >= 8.0" in err


def test_bench_cli_usage_and_bad_options(capsys):
    assert bench_main([]) == 2
    with pytest.raises(SystemExit) as e:
        bench_main(["sparse_speed", "--dtypes", "fp8"])
    assert e.value.code == 2



@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cslt", "torch"])
@pytest.mark.parametrize("tokens", [1, 16, 300])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_matches_masked_dense_on_gpu(dtype, backend, tokens):
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(256, 512, device="cuda", generator=g).to(dtype)
    w = w * nm_mask(w.float().abs(), 2, 4).to(dtype)
    bias = torch.randn(256, device="cuda", generator=g).to(dtype)
    lin = SemiStructuredLinear(w, bias, backend=backend)
    x = torch.randn(3, tokens, 512, device="cuda", generator=g).to(dtype)
    exact = torch.nn.functional.linear(x.double(), w.double(), bias.double())
    dense = torch.nn.functional.linear(x, w, bias).double()
    out = lin(x).double()
    assert out.shape == exact.shape

    def rel(y: torch.Tensor) -> float:
        return float((y - exact).norm() / exact.norm())

    # Both outputs are rounded to `dtype`; bf16's rounding alone is ~1e-3 relative, so the export must be
    # within 1e-3 of the exact product or, where the dtype's own rounding is larger, no worse than 2x the
    # dense layer's error in the same dtype.
    assert rel(out) <= max(1e-3, 2 * rel(dense)), (rel(out), rel(dense))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_semi_structured_replaces_only_24_layers():
    from lottery.export import to_semi_structured

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64)).cuda().half()
    with torch.no_grad():
        model[0].weight.mul_(nm_mask(model[0].weight.abs(), 2, 4))
    x = torch.randn(32, 64, device="cuda", dtype=torch.float16)
    ref = model(x).float()
    assert to_semi_structured(model) == ["0"]
    assert isinstance(model[0], SemiStructuredLinear) and isinstance(model[2], nn.Linear)
    assert float((model(x).float() - ref).norm() / ref.norm()) <= 1e-3
