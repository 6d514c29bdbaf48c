"""training.precision on every engine: 32-true is bitwise what the engines computed before the option existed
(digests pinned from the code before issue 18); bf16-mixed trains under autocast and stays close to fp32."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import run_replicates
from test_fast import datamodule, spec
from test_replicates import lenet, replicate_inputs

from lottery.imp.level import seed_everything, train_level
from lottery.models import create_model, prunable_names
from lottery.pruning import Mask, magnitude_prune

pytestmark = pytest.mark.usefixtures("one_thread")

# sha256 (first 16 hex digits) of the final weights and history, computed on one CPU thread with the code before
# training.precision existed (same inputs as below): 32-true must reproduce them to the bit.
PINNED = {"trainer": "2f0b6c8b11f64bef", "fabric": "2f0b6c8b11f64bef", "batched": "226d33cb5c165325"}


def digest(state: dict[str, torch.Tensor], history: object) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().contiguous().numpy().tobytes())
    h.update(repr(history).encode())
    return h.hexdigest()[:16]


def level(engine: str, tmp: Path, precision: str):
    seed_everything(0)
    model = create_model("lenet_300_100", seed=0)
    names = prunable_names(model)
    mask = magnitude_prune(dict(model.named_parameters()), Mask.ones(model, names), 2, {n: 0.3 for n in names}, 0.3)
    result = train_level(model, mask, datamodule(), replace(spec(engine), precision=precision), tmp / "x.ckpt",
                         rewind=(7, lambda state: None))
    return result, mask


def replicates(precision: str):
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(100, 1, 28, 28, generator=g), torch.randint(0, 10, (100,), generator=g))
    val = (torch.randn(30, 1, 28, 28, generator=g), torch.randint(0, 10, (30,), generator=g))
    inits, masks = replicate_inputs([0, 1])
    runs = run_replicates(lenet, inits, masks, train, 20, [0, 1], 12, eval_every=5, eval_sets={"val": val},
                            precision=precision)
    return runs, masks


@pytest.mark.parametrize("engine", ["trainer", "fabric"])
def test_32_true_is_bitwise_the_old_result_and_bf16_trains_close_to_it(engine: str, tmp_path: Path) -> None:
    ref, mask = level(engine, tmp_path / "a", "32-true")
    assert digest(ref.model.state_dict(), ref.history) == PINNED[engine]
    low, _ = level(engine, tmp_path / "b", "bf16-mixed")
    assert [h["iteration"] for h in low.history] == [h["iteration"] for h in ref.history]
    for got, want in zip(low.history, ref.history, strict=True):
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=0.05)  # bf16 rounding, not another run
    weights, ref_weights = low.model.state_dict(), ref.model.state_dict()
    assert all(w.dtype == torch.float32 for w in weights.values())  # mixed: the weights stay fp32
    assert any(not torch.equal(weights[k], ref_weights[k]) for k in weights)  # autocast really ran
    for name, keep in mask.items():
        assert torch.count_nonzero(weights[name][~keep]) == 0


def test_batched_precisions() -> None:
    ref, masks = replicates("32-true")
    assert digest({f"{r}.{k}": v for r, run in enumerate(ref) for k, v in run.state.items()},
                  [run.history for run in ref]) == PINNED["batched"]
    low, _ = replicates("bf16-mixed")
    for a, b in zip(low, ref, strict=True):
        for got, want in zip(a.history, b.history, strict=True):
            assert got["val_loss"] == pytest.approx(want["val_loss"], rel=0.05)
    assert any(not torch.equal(low[1].state[k], ref[1].state[k]) for k in ref[1].state)
    assert torch.count_nonzero(low[1].state["layers.0.weight"][~masks[1]["layers.0.weight"]]) == 0


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision='fp8'"):
        replicates("fp8")
