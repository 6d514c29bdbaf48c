"""Save and reload pruned models: weights through ``save_pretrained`` (safetensors), masks alongside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

MASKS_FILE = "masks.safetensors"
REPORT_FILE = "prune_report.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def save_pruned(
    model: nn.Module, out_dir: str | Path, masks: dict[str, Tensor] | None = None,
    report: dict | None = None, tokenizer: Any | None = None,
) -> Path:
    """Write the model (safetensors), the keep-masks (``masks.safetensors``) and an optional JSON report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if masks:
        save_file({k: v.detach().to("cpu", torch.bool).contiguous() for k, v in masks.items()},
                  str(out_dir / MASKS_FILE))
    if report is not None:
        (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return out_dir


def check_model_dir(path: str | Path) -> Path:
    """The folder as a Path if it holds a config and weights, else FileNotFoundError naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in model folder {path}")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"no weights in model folder {path}: expected one of {', '.join(WEIGHT_FILES)}; "
            f"found {sorted(p.name for p in path.iterdir())}"
        )
    return path


def load_masks(path: str | Path) -> dict[str, Tensor]:
    """Masks saved by ``save_pretrained`` ({} when the folder has none)."""
    file = Path(path) / MASKS_FILE
    return load_file(str(file)) if file.is_file() else {}


def load_pruned(path: str | Path, model_cls: Any | None = None, **kwargs: Any) -> tuple[nn.Module, dict]:
    """``(model, masks)`` from a folder written by ``save_pruned``.

    ``model_cls`` defaults to the class named in ``config.architectures`` (e.g. LlamaForCausalLM).
    """
    path = check_model_dir(path)
    if model_cls is None:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
        model_cls = getattr(transformers, architectures[0], None) if architectures else None
        if model_cls is None:
            model_cls = transformers.AutoModel
    model = model_cls.from_pretrained(path, **kwargs)
    return model, load_masks(path)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Zero the pruned weights again (``masks`` keyed by parameter name, weight layout, True = keep)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"mask for {name!r} matches no parameter of {type(model).__name__}")
        params[name].mul_(mask.to(params[name].device, params[name].dtype))
