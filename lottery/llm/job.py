"""The one-shot pruning job: load (or train) a model, prune it with each configured method and pattern, evaluate.

    python -m lottery.run +exp=oneshot_llm model.name_or_path=PATH prune.method=sparsegpt prune.pattern=2:4
    python -m lottery.run +exp=oneshot_charlm      # trains a small byte-level Llama once, then compares methods
    python -m lottery.run +exp=oneshot_minilm      # all-MiniLM-L6-v2, cosine similarity to the dense embeddings

Run folder `oneshot_<hash>/`: config.yaml, `<method>_<pattern>/model/` (safetensors + masks.safetensors +
prune_report.json), `<method>_<pattern>/result.json` (written last: marks the variant done), results.json.
A non-uniform allocation (`prune.allocation=owl|linear`) adds a suffix: `wanda_unstructured_owl/`.
A structured pattern (`neurons`, `neurons+heads`; lottery.llm.structured_job) stores the narrower model instead.
The dense model's score is cached in `dense_<hash>/` (keyed by model and evaluation only), OWL's outlier ratios
in `owl_<hash>/` (keyed by model, calibration, owl_m and the pruned layers), a trained charlm in
`charlm_<hash>/`. A rerun skips finished variants.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lottery.errors import ConfigError, LotteryError
from lottery.llm.adapters import find_blocks, find_layers, get_weight
from lottery.llm.allocation import allocate, check_range
from lottery.llm.calibration import (
    calibration_text,
    load_text,
    model_max_length,
    sample_segments,
    tokenize_text,
)
from lottery.llm.checkpoint import save_pruned
from lottery.llm.experts import unfused_experts
from lottery.llm.outliers import BlockOutliers, block_sizes, outlier_ratios
from lottery.llm.perplexity import perplexity
from lottery.llm.schema import allocations, as_list, parse_pattern, resolve_model_path, validate_oneshot
from lottery.llm.sequential import prune_model
from lottery.llm.sources import gguf_model_folder
from lottery.llm.structured_job import check_structured_patterns, structured_variant
from lottery.llm.structured_schema import is_structured
from lottery.llm.subject import Subject
from lottery.tracking import RunStore, load_json, load_torch, save_json, save_torch
from lottery.tracking.atomic import atomic_dir

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _pattern_dirname(pattern: str) -> str:
    return str(pattern).replace(":", "of").replace("+", "_")


def variant_dirname(method: str, pattern: str, allocation: str = "uniform") -> str:
    """`<method>_<pattern>` (uniform keeps the name it always had), else `<method>_<pattern>_<allocation>`."""
    base = f"{method}_{_pattern_dirname(pattern)}"
    return base if allocation == "uniform" else f"{base}_{allocation}"


def variants(methods: list[str], patterns: list[str], allocs: list[str]) -> list[tuple[str, str, str]]:
    """(method, pattern, allocation) of every variant: N:M patterns are uniform by definition, so run only uniform."""
    out = []
    for pattern in patterns:
        mine = allocs if pattern == "unstructured" else [a for a in allocs if a == "uniform"]
        out += [(method, pattern, allocation) for method in methods for allocation in mine]
    return out


def _device(cfg: DictConfig) -> torch.device:
    device = torch.device(cfg.model.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device={cfg.model.device!r} but no CUDA device is available; use model.device=cpu")
    return device


def _on_device(model: nn.Module, device: torch.device, fn: Callable[[nn.Module], float]) -> float:
    """Evaluate with the whole model on `device`, then return it to the CPU."""
    model.to(device)
    try:
        return fn(model)
    finally:
        model.to("cpu")


def check_nm_widths(model: nn.Module, patterns: list[str], include: list[str], exclude: list[str]) -> None:
    """ConfigError if a pruned layer's input width is not divisible by an N:M pattern's M."""
    path, blocks = find_blocks(model)
    for pattern in patterns:
        _, m = parse_pattern(str(pattern)) or (0, 0)
        if not m:
            continue
        for i, block in enumerate(blocks):
            with unfused_experts(block, f"{path}.{i}"):  # fused MoE experts checked as the linears pruned
                layers = find_layers(block, f"{path}.{i}", include or None, exclude or None)
            for name, module in layers.items():
                d_in = get_weight(module).shape[1]
                if d_in % m:
                    raise ConfigError(f"prune.pattern={pattern} needs every pruned layer's input width divisible by "
                                      f"M={m}; {name} has {d_in}. Choose another pattern or prune.exclude it")


def _load_hf(cfg: DictConfig, path: str, encoder: bool) -> tuple[Callable[[], nn.Module], Any]:
    import transformers

    kwargs = dict(dtype=DTYPES[cfg.model.dtype], trust_remote_code=cfg.model.trust_remote_code)
    cls = transformers.AutoModel if encoder else transformers.AutoModelForCausalLM
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"model.name_or_path={cfg.model.name_or_path!r}: cannot load the tokenizer "
                          f"({type(err).__name__}: {str(err).splitlines()[0]})") from None

    def load() -> nn.Module:
        try:
            model = cls.from_pretrained(path, **kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"model.name_or_path={cfg.model.name_or_path!r}: cannot load the model "
                              f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
        return model.eval()

    return load, tokenizer


def model_folder(cfg: DictConfig) -> str:
    """The folder (or hub name) transformers loads: a GGUF file is converted once into the store first."""
    if cfg.model.get("gguf_file"):
        return str(gguf_model_folder(cfg.model.name_or_path, cfg.model.gguf_file, cfg.store.root))
    return resolve_model_path(cfg.model.name_or_path)


# Token ids of whole texts, kept for the process: a figure runs several configs of one model in one process, and
# reading and tokenizing the 4 MB calibration corpus is most of the start-up of each. Never mutated.
_TOKENS: dict[tuple[str, str, str | None], tuple[torch.Tensor, str]] = {}


def tokenized_corpus(tokenizer: Any, folder: str, corpus: str, path: str | None) -> tuple[torch.Tensor, str]:
    """(ids [1, L], description) of a calibration corpus (or, with corpus "file", any text file)."""
    key = (folder, corpus, path)
    if key not in _TOKENS:
        if len(_TOKENS) >= 4:
            _TOKENS.clear()
        text, described = calibration_text(corpus, path)
        _TOKENS[key] = (tokenize_text(tokenizer, text), described)
    return _TOKENS[key]


def _hf_causal_subject(cfg: DictConfig) -> Subject:
    folder = model_folder(cfg)
    load, tokenizer = _load_hf(cfg, folder, encoder=False)
    model = load()
    c, e = cfg.calibration, cfg.eval
    ids, described = tokenized_corpus(tokenizer, folder, c.get("corpus", "file"), c.text)
    seqlen = min(c.seqlen, model_max_length(model) or c.seqlen)
    calib_ids = sample_segments(ids, c.nsamples, seqlen, c.seed)
    described = f"{described}: {c.nsamples} windows x {seqlen} tokens, seed {c.seed}"
    log.info("Calibration text: %s", described)
    seqlen = min(e.seqlen, model_max_length(model) or e.seqlen)
    eval_ids = tokenized_corpus(tokenizer, folder, "file", e.text)[0].reshape(-1)
    if e.max_chunks:
        eval_ids = eval_ids[: e.max_chunks * seqlen]
    device = _device(cfg)
    del model

    def evaluate(model: nn.Module) -> float:
        return _on_device(model, device, lambda m: perplexity(m, eval_ids, seqlen, progress=cfg.progress_bar))

    key = {"model": OmegaConf.to_container(cfg.model, resolve=True), "eval": OmegaConf.to_container(e, resolve=True)}
    return Subject(load, calib_ids, evaluate, "perplexity", key, tokenizer, calibration=described)


def _encoder_subject(cfg: DictConfig) -> Subject:
    from lottery.llm.embeddings import (
        encoder_calibration,
        eval_calib_split,
        mean_cosine,
        sentence_embeddings,
        split_sentences,
    )

    path = resolve_model_path(cfg.model.name_or_path)
    load, tokenizer = _load_hf(cfg, path, encoder=True)
    model = load()
    c, e = cfg.calibration, cfg.eval
    max_len = min(e.seqlen, model_max_length(model) or e.seqlen)
    eval_sentences, calib_sentences = eval_calib_split(split_sentences(load_text(e.text)), e.sentences)
    calib_ids = encoder_calibration(tokenizer, calib_sentences, c.nsamples,
                                    min(c.seqlen, model_max_length(model) or c.seqlen), c.seed)
    device = _device(cfg)
    del model
    reference: dict[str, torch.Tensor] = {}

    def embed(model: nn.Module) -> torch.Tensor:
        return _on_device(model, device, lambda m: sentence_embeddings(
            m, tokenizer, eval_sentences, e.batch_size, max_len, progress=cfg.progress_bar))

    def dense_artifacts(folder: Path) -> None:
        file = folder / "embeddings.pt"
        if not file.exists():
            save_torch(embed(load()), file)
        reference["emb"] = load_torch(file)

    def evaluate(model: nn.Module) -> float:
        return mean_cosine(embed(model), reference["emb"])

    key = {"model": OmegaConf.to_container(cfg.model, resolve=True), "eval": OmegaConf.to_container(e, resolve=True)}
    return Subject(load, calib_ids, evaluate, "cosine", key, tokenizer, dense_artifacts)


def _charlm_subject(cfg: DictConfig) -> Subject:
    from lottery.llm.calibration import sample_segments
    from lottery.llm.charlm import build_model, split_ids, train_charlm

    mc = cfg.model
    train_ids, val_ids = split_ids(mc.text, mc.val_fraction)
    key = OmegaConf.create({"model": OmegaConf.to_container(mc, resolve=True), "seed": cfg.seed})
    with RunStore(cfg.store.root, key, prefix="charlm") as cache:
        model_dir = cache.file("model")
        if cache.file("train.json").exists():
            log.info("Trained charlm found in %s; not training again", cache.path)
        else:
            log.info("Training the charlm into %s", cache.path)
            model = build_model(mc.hidden_size, mc.intermediate_size, mc.num_layers, mc.num_heads, mc.seqlen, cfg.seed)
            began = time.perf_counter()
            loss = train_charlm(model, train_ids, mc.seqlen, mc.batch_size, mc.steps, mc.lr, mc.weight_decay, cfg.seed,
                                str(_device(cfg)), cfg.progress_bar)
            atomic_dir(model_dir, lambda tmp: model.save_pretrained(tmp))
            save_json({"final_train_loss": loss, "train_seconds": time.perf_counter() - began,
                       "parameters": sum(p.numel() for p in model.parameters())}, cache.file("train.json"))

    import transformers

    def load() -> nn.Module:
        return transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=DTYPES[mc.dtype]).eval()

    c, e = cfg.calibration, cfg.eval
    calib_ids = sample_segments(train_ids.reshape(1, -1), c.nsamples, min(c.seqlen, mc.seqlen), c.seed)
    seqlen = min(e.seqlen, mc.seqlen)
    eval_ids = val_ids[: e.max_chunks * seqlen] if e.max_chunks else val_ids
    device = _device(cfg)

    def evaluate(model: nn.Module) -> float:
        return _on_device(model, device, lambda m: perplexity(m, eval_ids, seqlen, progress=cfg.progress_bar))

    dense_key = {"charlm": str(model_dir), "eval": {"seqlen": seqlen, "max_chunks": e.max_chunks}}
    return Subject(load, calib_ids, evaluate, "perplexity", dense_key)


def build_subject(cfg: DictConfig) -> Subject:
    if cfg.model.kind == "charlm":
        return _charlm_subject(cfg)
    if cfg.eval.metric == "embedding_cosine":
        return _encoder_subject(cfg)
    return _hf_causal_subject(cfg)


def dense_score(cfg: DictConfig, subject: Subject) -> dict[str, Any]:
    """The dense model's score, cached in its own folder keyed by model and evaluation."""
    with RunStore(cfg.store.root, OmegaConf.create(subject.dense_key), prefix="dense") as cache:
        if subject.dense_artifacts is not None:
            subject.dense_artifacts(cache.path)
        file = cache.file("metrics.json")
        if file.exists():
            return load_json(file)
        began = time.perf_counter()
        model = subject.load()
        result = {subject.metric: subject.evaluate(model), "eval_seconds": time.perf_counter() - began,
                  "parameters": sum(p.numel() for p in model.parameters())}
        save_json(result, file)
        return result


def owl_outliers(cfg: DictConfig, subject: Subject) -> BlockOutliers:
    """OWL's per-block outlier ratios of the dense model (a dense pre-pass), cached in `owl_<hash>/ratios.json`."""
    p = cfg.prune
    key = {"dense": subject.dense_key, "calibration": OmegaConf.to_container(cfg.calibration, resolve=True),
           "include": list(p.include), "exclude": list(p.exclude), "owl_m": float(p.owl_m)}
    with RunStore(cfg.store.root, OmegaConf.create(key), prefix="owl") as cache:
        file = cache.file("ratios.json")
        if file.exists():
            found = load_json(file)
            return BlockOutliers(found["ratios"], found["sizes"])
        began = time.perf_counter()
        found = outlier_ratios(subject.load(), subject.calib_ids, float(p.owl_m), include=list(p.include) or None,
                               exclude=list(p.exclude) or None, device=_device(cfg), progress=cfg.progress_bar)
        save_json({"ratios": found.ratios, "sizes": found.sizes, "owl_m": float(p.owl_m),
                   "seconds": time.perf_counter() - began}, file)
        return found


def plan_allocations(cfg: DictConfig, subject: Subject, probe: nn.Module, allocs: list[str],
                     patterns: list[str]) -> dict[str, dict[str, Any]]:
    """Per non-uniform allocation: its block sparsities (and OWL's outlier ratios). ConfigError, before any run
    folder exists, if one would leave [0, 1) (nothing is clipped)."""
    wanted = [a for a in allocs if a != "uniform"] if "unstructured" in patterns else []
    if not wanted:
        return {}
    p = cfg.prune
    sizes = block_sizes(probe, list(p.include) or None, list(p.exclude) or None)
    ratios = owl_outliers(cfg, subject).ratios if "owl" in wanted else None
    plans = {}
    for allocation in wanted:
        block_sparsity = allocate(allocation, float(p.sparsity), float(p.owl_lambda), sizes, ratios)
        try:
            check_range(block_sparsity, allocation, float(p.owl_lambda))
        except ValueError as err:
            raise ConfigError(str(err)) from None
        plans[allocation] = {"block_sparsity": block_sparsity,
                             "outlier_ratios": ratios if allocation == "owl" else None}
    return plans


def prune_variant(cfg: DictConfig, subject: Subject, method: str, pattern: str, folder: Path,
                  allocation: str = "uniform", plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prune one (method, pattern, allocation) into `folder` unless it is done; return its result record.

    `plan` (non-uniform allocations) holds the block sparsities to prune to, from `plan_allocations`."""
    if (folder / "result.json").exists():
        log.info("%s %s %s already done; skipping", method, pattern, allocation)
        return load_json(folder / "result.json")
    p = cfg.prune
    n, m = parse_pattern(str(pattern)) or (0, 0)  # prune_model's n = m = 0: unstructured
    model = subject.load()
    device = _device(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    sparsity = plan["block_sparsity"] if plan else p.sparsity  # uniform: one float, exactly as before
    report = prune_model(model, method, sparsity, subject.calib_ids, n=n, m=m, blocksize=p.blocksize,
                         percdamp=p.percdamp, per_row=p.per_row, true_sequential=p.true_sequential,
                         include=list(p.include) or None, exclude=list(p.exclude) or None, device=device,
                         devices=list(p.get("devices") or []) or None, progress=cfg.progress_bar)
    prune_seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    began = time.perf_counter()
    score = subject.evaluate(model)
    eval_seconds = time.perf_counter() - began
    summary = report.to_dict()
    atomic_dir(folder / "model", lambda tmp: save_pruned(model, tmp, report.masks, summary, subject.tokenizer))
    result = {"method": method, "pattern": str(pattern), "sparsity_target": p.sparsity if not m else 1 - n / m,
              "total_sparsity": summary["total_sparsity"], "nm_valid": summary["nm_valid"],
              subject.metric: score, "prune_seconds": prune_seconds, "eval_seconds": eval_seconds,
              "peak_gpu_bytes": peak, "allocation": allocation, "block_sparsity": summary["block_sparsity"],
              "outlier_ratios": plan.get("outlier_ratios") if plan else None, "layers": summary["layers"]}
    save_json(result, folder / "result.json")
    return result


def format_table(rows: list[dict[str, Any]], dense: dict[str, Any], metric: str, title: str) -> str:
    """The console summary: one line per variant."""
    label = "ppl" if metric == "perplexity" else "cosine"
    # The allocation column appears once a run has a non-uniform allocation (older tables keep their layout).
    shown = any(r.get("allocation", "uniform") != "uniform" for r in rows)
    alloc = f"{'allocation':<10} " if shown else ""
    head = (f"{'method':<10} {'pattern':<12} {alloc}{'sparsity':>8} {label + ' dense':>12} {label + ' pruned':>12} "
            f"{'N:M ok':>6} {'time s':>8}")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        nm = "-" if r["nm_valid"] is None else ("yes" if r["nm_valid"] else "NO")
        alloc = f"{r.get('allocation', 'uniform'):<10} " if shown else ""
        lines.append(f"{r['method']:<10} {r['pattern']:<12} {alloc}{100 * r['total_sparsity']:>7.2f}% "
                     f"{dense[metric]:>12.4f} {r[metric]:>12.4f} {nm:>6} {r['prune_seconds']:>8.1f}")
    return "\n".join(lines)


def _log_wandb(cfg: DictConfig, store: RunStore, dense: dict[str, Any], rows: list[dict[str, Any]],
               metric: str) -> None:
    """Mirror the run to W&B (offline by default): config, summary and per-variant / per-layer tables."""
    if cfg.logger.name == "none":
        return
    import wandb

    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=f"oneshot_{store.hash}",
                     name=f"oneshot_{store.hash}", job_type="oneshot", config=OmegaConf.to_container(cfg, resolve=True),
                     tags=list(cfg.logger.tags), dir=str(store.path), mode=cfg.logger.mode,
                     settings=wandb.Settings(console="off", silent=True, init_timeout=90))
    run.summary[f"dense/{metric}"] = dense[metric]
    for r in rows:
        tag = variant_dirname(r["method"], r["pattern"], r.get("allocation", "uniform"))
        run.summary.update({f"{tag}/{metric}": r[metric], f"{tag}/total_sparsity": r["total_sparsity"],
                            f"{tag}/prune_seconds": r["prune_seconds"]})
    columns = ["method", "pattern", "allocation", "total_sparsity", "nm_valid", metric, "prune_seconds"]
    results = wandb.Table(columns=columns, data=[[r.get(c, "uniform" if c == "allocation" else None) for c in columns]
                                                 for r in rows])
    layer_columns = ["method", "pattern", "layer", "d_out", "d_in", "sparsity", "rel_error", "nm_valid"]
    layers = wandb.Table(columns=layer_columns, data=[
        [r["method"], r["pattern"], lr["name"], lr["shape"][0], lr["shape"][1], lr["sparsity"], lr["rel_error"],
         lr["nm_valid"]] for r in rows for lr in r["layers"]])
    run.log({"results": results, "layers": layers})
    run.finish()


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Run (or resume) the one-shot pruning experiment of `cfg`; returns one record per variant."""
    validate_oneshot(cfg)
    methods, patterns = [str(x) for x in as_list(cfg.prune.method)], [str(x) for x in as_list(cfg.prune.pattern)]
    allocs = allocations(cfg.prune)
    try:
        subject = build_subject(cfg)
        probe = subject.load()
        check_nm_widths(probe, patterns, list(cfg.prune.include), list(cfg.prune.exclude))
        check_structured_patterns(probe, patterns, cfg.prune.sparsity)
    except ValueError as err:  # unsupported architecture, too little text for seqlen, ...
        if isinstance(err, LotteryError):
            raise
        raise ConfigError(f"{type(err).__name__}: {err}") from None
    if subject.calibration:
        print(f"calibration: {subject.calibration}", flush=True)
    if any(a != "uniform" for a in allocs) and any(p != "unstructured" for p in patterns):
        print("note: N:M and structured patterns are uniform by definition; they run only prune.allocation=uniform",
              flush=True)
    plans = plan_allocations(cfg, subject, probe, allocs, patterns)
    del probe
    dense = dense_score(cfg, subject)
    rows = []
    with RunStore(cfg.store.root, cfg, prefix="oneshot") as store:
        log.info("Run folder: %s", store.path)
        for method, pattern, allocation in variants(methods, patterns, allocs):
            folder = store.file(variant_dirname(method, pattern, allocation))
            if is_structured(pattern):
                rows.append(structured_variant(cfg, subject, method, pattern, folder))
            else:
                rows.append(prune_variant(cfg, subject, method, pattern, folder, allocation, plans.get(allocation)))
        brief = [{k: v for k, v in r.items() if k != "layers"} for r in rows]
        save_json({"dense": dense, "metric": subject.metric, "calibration": subject.calibration, "results": brief},
                  store.file("results.json"))
        _log_wandb(cfg, store, dense, rows, subject.metric)
    print(format_table(rows, dense, subject.metric, title=f"one-shot {cfg.name} — {store.path}"))
    return rows
