"""The structured variant of the one-shot job: remove whole MLP neurons (and key/value groups), export the
narrower model, evaluate it.

`prune.pattern=neurons` or `neurons+heads`; `prune.sparsity` is the fraction of units removed in every block;
`prune.method` is the unit score (wanda: activation-aware; magnitude). The variant folder holds `model/`, the
narrower Hugging Face model with its tokenizer (plain `AutoModelForCausalLM.from_pretrained` reloads it), and
`result.json` (written last) with the perplexity of that narrow model, the parameter counts before and after,
the fractions removed, and the largest logit difference between the narrow and the masked model on one
calibration window (a check that the export is exact).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lottery.llm.structured import (
    StructuredPlan,
    apply_mask_,
    calibration_norms,
    check_structured,
    narrow,
    plan_structured,
    unit_norms,
)
from lottery.llm.structured_schema import STRUCTURED_PATTERNS
from lottery.tracking import save_json
from lottery.tracking.atomic import atomic_dir

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from lottery.llm.subject import Subject

log = logging.getLogger(__name__)
__all__ = ["check_structured_patterns", "ratios", "structured_variant"]


def ratios(pattern: str, sparsity: float) -> tuple[float, float]:
    """(MLP neuron ratio, key/value group ratio) that `pattern` removes at `prune.sparsity`."""
    return float(sparsity), float(sparsity) if STRUCTURED_PATTERNS[pattern] else 0.0


def check_structured_patterns(model: nn.Module, patterns: list[str], sparsity: float) -> None:
    """ConfigError before any run folder if a structured pattern empties a block or cannot resolve the model."""
    for pattern in patterns:
        if pattern in STRUCTURED_PATTERNS:
            check_structured(model, *ratios(pattern, sparsity), note=f" (prune.pattern={pattern})")


# Input norms of the dense model, kept for the process: they depend only on the model and the calibration windows,
# and a sweep prunes one model at many ratios and both patterns (each a calibration pass otherwise). Never mutated.
_NORMS: dict[str, list[dict[str, torch.Tensor]]] = {}


def _norms_key(cfg: DictConfig, calib_ids: torch.Tensor) -> str:
    from omegaconf import OmegaConf

    model = json.dumps(OmegaConf.to_container(cfg.model, resolve=True), sort_keys=True)
    return hashlib.sha256(model.encode() + calib_ids.cpu().numpy().tobytes()).hexdigest()


def _wanda_norms(cfg: DictConfig, subject: Subject, model: nn.Module, device: torch.device
                 ) -> list[dict[str, torch.Tensor]]:
    """||X_j|| of every block's inputs over the calibration windows (one dense forward per window, once)."""
    key = _norms_key(cfg, subject.calib_ids)
    if key not in _NORMS:
        if len(_NORMS) >= 4:
            _NORMS.clear()
        model.to(device)
        windows = tqdm(subject.calib_ids.split(1), desc="structured: input norms", unit="window",
                       disable=not cfg.progress_bar)
        try:
            _NORMS[key] = calibration_norms(model, windows)
        finally:
            model.to("cpu")
    return _NORMS[key]


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_rows(model: nn.Module, plan: StructuredPlan) -> list[dict[str, Any]]:
    """Per block linear: its dense shape and the fraction of its weights the plan removes (W&B's layer table)."""
    rows = []
    for i, (block, mlp_keep, kv_keep) in enumerate(zip(model.model.layers, plan.mlp_keep, plan.kv_keep, strict=True)):
        mlp_frac = 1 - len(mlp_keep) / block.mlp.up_proj.out_features
        kv_frac = 1 - len(kv_keep) / (block.self_attn.k_proj.out_features // plan.head_dim)
        for part, names, frac in (("mlp", ("gate_proj", "up_proj", "down_proj"), mlp_frac),
                                  ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj"), kv_frac)):
            for name in names:
                w = getattr(getattr(block, part), name).weight
                rows.append({"name": f"model.layers.{i}.{part}.{name}", "shape": list(w.shape), "numel": w.numel(),
                             "pruned": round(frac * w.numel()), "sparsity": frac, "rel_error": None,
                             "nm_valid": None})
    return rows


@torch.no_grad()
def _logit_gap(masked: nn.Module, small: nn.Module, ids: torch.Tensor, device: torch.device) -> float:
    """max |logits(masked) - logits(narrow)| on `ids` [1, T]."""
    gaps = []
    for model in (masked, small):
        model.to(device)
        gaps.append(model(input_ids=ids.to(device)).logits.float().cpu())
        model.to("cpu")
    return float((gaps[0] - gaps[1]).abs().max())


def structured_variant(cfg: DictConfig, subject: Subject, method: str, pattern: str, folder: Path) -> dict[str, Any]:
    """Prune one (score, structured pattern) into `folder` unless it is done; return its result record."""
    from lottery.tracking import load_json

    if (folder / "result.json").exists():
        log.info("%s %s already done; skipping", method, pattern)
        return load_json(folder / "result.json")
    mlp_ratio, kv_ratio = ratios(pattern, cfg.prune.sparsity)
    device = torch.device(cfg.model.device)
    model = subject.load()
    began = time.perf_counter()
    if method == "wanda":
        norms = _wanda_norms(cfg, subject, model, device)
    else:  # magnitude: the unit score is sum |W|
        norms = unit_norms(model)
    plan = plan_structured(model, norms, mlp_ratio, kv_ratio)
    small = narrow(model, plan)
    prune_seconds = time.perf_counter() - began
    layers = _layer_rows(model, plan)
    masked = copy.deepcopy(model)
    apply_mask_(masked, plan)
    gap = _logit_gap(masked, small, subject.calib_ids[:1], device)
    del masked
    began = time.perf_counter()
    score = subject.evaluate(small)
    eval_seconds = time.perf_counter() - began

    def save(tmp: Path) -> None:
        small.save_pretrained(tmp)
        if subject.tokenizer is not None:
            subject.tokenizer.save_pretrained(tmp)

    atomic_dir(folder / "model", save)
    before, after = _numel(model), _numel(small)
    block_numel = sum(r["numel"] for r in layers)
    cfg_small = small.config
    dense_kv = model.model.layers[0].self_attn.k_proj.out_features // plan.head_dim
    result = {"method": method, "pattern": pattern, "sparsity_target": float(cfg.prune.sparsity),
              "mlp_ratio": mlp_ratio, "kv_ratio": kv_ratio,
              "mlp_removed": 1 - cfg_small.intermediate_size / model.config.intermediate_size,
              "kv_removed": 1 - cfg_small.num_key_value_heads / dense_kv,
              "intermediate_size": cfg_small.intermediate_size, "num_attention_heads": cfg_small.num_attention_heads,
              "num_key_value_heads": cfg_small.num_key_value_heads,
              "total_sparsity": sum(r["pruned"] for r in layers) / block_numel, "nm_valid": None,
              "params_before": before, "params_after": after, "params_removed": 1 - after / before,
              "narrow_vs_masked_max_logit_diff": gap, subject.metric: score, "prune_seconds": prune_seconds,
              "eval_seconds": eval_seconds, "peak_gpu_bytes": None, "layers": layers}
    save_json(result, folder / "result.json")
    return result
