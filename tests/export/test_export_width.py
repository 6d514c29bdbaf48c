"""Width compaction: structured-pruned neurons dropped, outputs unchanged (fp32, 1e-5)."""

import torch
import torch.nn.functional as F
from torch import nn

from lottery.export import compact_llama_mlps, compact_mlp, live_neurons, narrow_linear


class SwiGLU(nn.Module):
    def __init__(self, d: int = 16, inter: int = 40, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, inter, bias=bias)
        self.up_proj = nn.Linear(d, inter, bias=bias)
        self.down_proj = nn.Linear(inter, d, bias=bias)
        self.intermediate_size = inter

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _prune(mlp: SwiGLU) -> torch.Tensor:
    """Kill neurons three ways: zero up row, zero gate row, zero down column. Returns the dead mask."""
    dead = torch.zeros(mlp.up_proj.out_features, dtype=torch.bool)
    dead[[1, 5, 9, 30]] = True
    with torch.no_grad():
        mlp.up_proj.weight[[1, 5]] = 0
        mlp.gate_proj.weight[9] = 0
        mlp.down_proj.weight[:, 30] = 0
    return dead


def test_live_neurons_finds_rows_and_columns():
    torch.manual_seed(0)
    mlp = SwiGLU()
    dead = _prune(mlp)
    assert torch.equal(live_neurons(mlp.up_proj, mlp.down_proj, mlp.gate_proj), ~dead)


def test_compact_mlp_same_outputs():
    torch.manual_seed(0)
    mlp = SwiGLU()
    _prune(mlp)
    x = torch.randn(7, 16)
    ref = mlp(x)
    up, down, gate, kept = compact_mlp(mlp.up_proj, mlp.down_proj, mlp.gate_proj)
    assert up.out_features == gate.out_features == down.in_features == 36 == kept.numel()
    out = down(F.silu(gate(x)) * up(x))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_compact_llama_mlps_in_place_with_bias_and_multiple():
    torch.manual_seed(1)
    model = nn.Sequential(SwiGLU(bias=True), SwiGLU(bias=True))
    for mlp in model:
        _prune(mlp)
        with torch.no_grad():  # a zero up row only kills a neuron if its bias is zero too
            mlp.up_proj.bias[[1, 5]] = 0
            mlp.gate_proj.bias[9] = 0
    x = torch.randn(3, 5, 16)
    ref = model(x)
    report = compact_llama_mlps(model, multiple_of=8)
    assert report == {"0": (40, 40), "1": (40, 40)}  # 36 live rounds up to 40: nothing to gain here
    report = compact_llama_mlps(model, multiple_of=4)
    assert report == {"0": (40, 36), "1": (40, 36)} and model[0].intermediate_size == 36
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_relu_mlp_and_narrow_linear_columns():
    torch.manual_seed(2)
    fc1, fc2 = nn.Linear(12, 30), nn.Linear(30, 6)
    with torch.no_grad():
        fc2.weight[:, ::3] = 0  # every third hidden neuron pruned by its outgoing column
    x = torch.randn(4, 12)
    ref = fc2(torch.relu(fc1(x)))
    up, down, gate, kept = compact_mlp(fc1, fc2)
    assert gate is None and up.out_features == 20
    torch.testing.assert_close(down(torch.relu(up(x))), ref, atol=1e-5, rtol=1e-5)
    keep_in = torch.ones(12, dtype=torch.bool)
    keep_in[[0, 3]] = False
    with torch.no_grad():
        fc1.weight[:, [0, 3]] = 0
    narrow = narrow_linear(fc1, keep_in=keep_in)
    torch.testing.assert_close(narrow(x[:, keep_in]), fc1(x), atol=1e-5, rtol=1e-5)
