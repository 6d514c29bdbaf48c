"""The sparse fine-tuning job: train a finished one-shot variant with its masks held, then evaluate it.

    python -m lottery.run +exp=oneshot_finetune finetune.source=oneshot_<hash>/wanda_2of4
    python -m lottery.run +exp=oneshot_finetune finetune.source=sparsegpt_unstructured finetune.mode=lora

Run folder `<source variant>/finetune_<hash>/` (the hash of the finetune group, the seed and the source's
`oneshot_<hash>/<variant>` name): config.yaml, last.ckpt while training (resumed by a rerun, deleted at the
end), model/ (the fine-tuned weights, masks.safetensors, tokenizer), result.json (written last: marks it done).
Embeddings and the LM head are frozen in both modes (`finetune.train_embeddings=true` trains them in full mode).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from lottery.errors import ConfigError
from lottery.llm.calibration import model_max_length
from lottery.llm.checkpoint import load_pruned, save_pruned
from lottery.llm.finetune_loop import LoopSpec, train_masked
from lottery.llm.finetune_schema import source_config, validate_finetune
from lottery.llm.job import build_subject, dense_score, model_folder, tokenized_corpus
from lottery.llm.lora import add_lora, merge_under_mask
from lottery.tracking import RunStore, load_json, save_json
from lottery.tracking.atomic import atomic_dir

log = logging.getLogger(__name__)


def run_key(cfg: DictConfig, source: Path, device: str) -> DictConfig:
    """What names the run folder: the finetune group with the source as `oneshot_<hash>/<variant>` (however it
    was spelled) and the device resolved, plus the seed."""
    f = OmegaConf.to_container(cfg.finetune, resolve=True)
    f.update(source=f"{source.parent.name}/{source.name}", device=device)
    f.pop("checkpoint_every")  # cadence only: the same result
    return OmegaConf.create({"job": "finetune", "seed": cfg.seed, "finetune": f})


def window_batches(ids: Tensor, steps: int, batch_size: int, seqlen: int, seed: int) -> Tensor:
    """Start offsets [steps, batch_size] of random `seqlen` windows of `ids` [L], drawn once from `seed`."""
    if ids.numel() <= seqlen:
        raise ConfigError(f"finetune.seqlen={seqlen}: the training text has only {ids.numel()} tokens")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, ids.numel() - seqlen, (steps, batch_size), generator=generator)


def freeze_for(model: nn.Module, mode: str, train_embeddings: bool) -> None:
    """Full mode: everything but the embeddings and LM head trains (unless `train_embeddings`)."""
    if mode != "full":
        return
    for p in model.parameters():
        p.requires_grad_(True)
    if not train_embeddings:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                for p in module.parameters():
                    p.requires_grad_(False)


@torch.no_grad()
def mask_sparsity(model: nn.Module, masks: dict[str, Tensor]) -> tuple[float, bool]:
    """(fraction of zeros over the masked weights, whether every pruned weight is exactly zero)."""
    params = dict(model.named_parameters())
    zeros = total = 0
    holds = True
    for name, mask in masks.items():
        w = params[name].detach()
        zeros += int((w == 0).sum())
        total += w.numel()
        holds = holds and bool((w[~mask.to(w.device)] == 0).all())
    return zeros / max(total, 1), holds


def _wandb(cfg: DictConfig, store: RunStore) -> Any:
    if cfg.logger.name == "none":
        return None
    import wandb

    return wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=store.path.parent.parent.name,
                      name=f"{store.path.parent.name}/{store.path.name}", job_type="finetune",
                      config=OmegaConf.to_container(cfg, resolve=True), tags=list(cfg.logger.tags),
                      dir=str(store.path), mode=cfg.logger.mode,
                      settings=wandb.Settings(console="off", silent=True, init_timeout=cfg.logger.init_timeout))


def format_result(r: dict[str, Any]) -> str:
    return (f"finetune {r['source']} ({r['mode']}, {r['steps']} steps, {r['tokens_seen']:,} tokens, "
            f"{r['train_seconds']:.1f} s): ppl dense {r['dense_ppl']:.4f}  pruned {r['source_ppl']:.4f}  "
            f"fine-tuned {r['finetuned_ppl']:.4f}  gap closed {100 * r['gap_closed']:.1f}%  "
            f"sparsity {100 * r['sparsity']:.2f}% (masks hold: {r['masks_hold']})")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the fine-tune of `cfg`; returns its result record."""
    source = validate_finetune(cfg)
    f = cfg.finetune
    src_cfg = source_config(source)
    device = str(f.device or src_cfg.model.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"finetune.device={device!r} but no CUDA device is available; use finetune.device=cpu")
    src_cfg.model.device = device  # evaluate where it trains (the dense cache is keyed by it)
    src_cfg.progress_bar = cfg.progress_bar
    src_result = load_json(source / "result.json")
    subject = build_subject(src_cfg)
    folder = model_folder(src_cfg)
    ids = tokenized_corpus(subject.tokenizer, folder, f.corpus, f.text)[0].reshape(-1)
    with RunStore(source, run_key(cfg, source, device), prefix="finetune") as store:
        log.info("Run folder: %s", store.path)
        if store.file("result.json").exists():
            result = load_json(store.file("result.json"))
            print(format_result(result))
            return result
        dense = dense_score(src_cfg, subject)
        model, masks = load_pruned(source / "model", dtype=torch.float32)
        seqlen = min(f.seqlen, model_max_length(model) or f.seqlen)
        starts = window_batches(ids, f.steps, f.batch_size, seqlen, cfg.seed)
        offsets = torch.arange(seqlen)

        def batch(step: int) -> Tensor:
            return ids[starts[step][:, None] + offsets]

        freeze_for(model, f.mode, f.train_embeddings)
        trained = add_lora(model, masks, f.lora_r, f.lora_alpha, f.lora_dropout) if f.mode == "lora" else model
        spec = LoopSpec(f.steps, f.lr, f.schedule, f.warmup, f.weight_decay, f.grad_clip, f.precision, device,
                        f.checkpoint_every, cfg.progress_bar)
        tracker = _wandb(cfg, store)
        teacher = subject.load() if f.loss == "distill" else None  # the dense model the variant was pruned from
        outcome = train_masked(trained, masks, batch, spec, store.file("last.ckpt"),
                               (lambda step, row: tracker.log(row, step=step)) if tracker else None, teacher)
        del teacher
        extra: dict[str, Any] = {}
        began = time.perf_counter()
        if f.mode == "lora":
            # The adapters' own score (W + BA, not sparse) says what the masked merge gives up.
            extra["lora_unmerged_ppl"] = subject.evaluate(trained)
            model = merge_under_mask(trained, masks)
        sparsity, holds = mask_sparsity(model, masks)
        ppl = subject.evaluate(model)
        eval_seconds = time.perf_counter() - began
        atomic_dir(store.file("model"), lambda tmp: save_pruned(model, tmp, masks, None, subject.tokenizer))
        pruned, dense_ppl = src_result["perplexity"], dense["perplexity"]
        result = {"source": f"{source.parent.name}/{source.name}", "method": src_result["method"],
                  "pattern": src_result["pattern"], "mode": f.mode, "loss": f.loss, "steps": f.steps,
                  "batch_size": f.batch_size, "seqlen": seqlen, "lr": f.lr, "precision": f.precision, "device": device,
                  "tokens_seen": f.steps * f.batch_size * seqlen, "train_seconds": outcome.train_seconds,
                  "eval_seconds": eval_seconds, "peak_gpu_bytes": outcome.peak_gpu_bytes,
                  "first_train_loss": outcome.losses[0], "final_train_loss": sum(outcome.losses[-10:]) /
                  len(outcome.losses[-10:]), "dense_ppl": dense_ppl, "source_ppl": pruned, "finetuned_ppl": ppl,
                  "gap_closed": (pruned - ppl) / (pruned - dense_ppl) if pruned != dense_ppl else float("nan"),
                  "sparsity": sparsity, "source_sparsity": src_result["total_sparsity"], "masks_hold": holds,
                  "calibration": subject.calibration, **extra}
        save_json(result, store.file("result.json"))
        store.file("last.ckpt").unlink(missing_ok=True)
        if tracker is not None:
            tracker.summary.update({k: v for k, v in result.items() if isinstance(v, (int, float))})
            tracker.finish()
    print(format_result(result))
    return result
