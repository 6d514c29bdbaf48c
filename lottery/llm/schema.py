"""Config schema of the one-shot pruning job (`job: oneshot`) and its cheap validation.

Imports no model code (no transformers): `lottery.run` validates every command line with it before Hydra
starts. The checks that need the model (layer widths vs N:M) run in the job, before any run folder exists.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from lottery.config import check_choice
from lottery.errors import ConfigError
from lottery.llm.allocation import ALLOCATIONS
from lottery.llm.corpora import CORPORA, check_corpus
from lottery.llm.methods import METHODS
from lottery.llm.structured_schema import STRUCTURED_PATTERNS, check_structured_prune
from lottery.pruning.nm import parse_nm

MODEL_KINDS = ("hf", "charlm")
EVAL_METRICS = ("perplexity", "embedding_cosine")
DTYPES = ("float32", "bfloat16", "float16")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
PACKAGE_PREFIX = "pkg:"
GGUF_MAGIC = b"GGUF"
# The config groups of the job, selected with their defaults by conf/job/oneshot.yaml.
GROUPS = ("model", "prune", "calibration", "eval")


def default_text_root() -> str:
    """LOTTERY_TEXT if set, else <LOTTERY_DATA>/text, else ~/.cache/lottery/data/text (XDG_CACHE_HOME honoured)."""
    if os.environ.get("LOTTERY_TEXT"):
        return os.environ["LOTTERY_TEXT"]
    if os.environ.get("LOTTERY_DATA"):
        return str(Path(os.environ["LOTTERY_DATA"]) / "text")
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(cache) / "lottery" / "data" / "text")


if not OmegaConf.has_resolver("lottery_text_root"):
    OmegaConf.register_new_resolver("lottery_text_root", default_text_root)


@dataclass
class HFModelConfig:
    """A Hugging Face model: a hub name, a local folder, or `pkg:<python package>/<folder>`."""

    kind: str = "hf"
    name_or_path: str = MISSING
    dtype: str = "float32"
    device: str = "cpu"  # where blocks are pruned and evaluated: cpu | cuda | cuda:N
    trust_remote_code: bool = False
    gguf_file: str | None = None  # a GGUF file inside name_or_path (a folder or pkg:): converted once, then cached


@dataclass
class CharLMConfig:
    """A small Llama-architecture character-level LM, trained once on `text` and cached in the run store."""

    kind: str = "charlm"
    text: str = "${lottery_text_root:}/tinyshakespeare.txt"
    val_fraction: float = 0.1  # the last 10% of the characters are held out
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    seqlen: int = 128
    batch_size: int = 32
    steps: int = 600
    lr: float = 3e-3
    weight_decay: float = 0.0
    dtype: str = "float32"
    device: str = "cpu"


@dataclass
class PruneConfig:
    """`method` and `pattern` take one value or a list (then every combination is pruned and compared)."""

    method: Any = "sparsegpt"  # magnitude | wanda | sparsegpt, or a list of them
    sparsity: float = 0.5  # unstructured: of the weights; structured: of the units of every block; N:M: 1 - N/M
    pattern: Any = "unstructured"  # unstructured | N:M (e.g. 2:4) | neurons | neurons+heads, or a list of them
    blocksize: int = 128  # SparseGPT's lazy-update block (a multiple of M)
    percdamp: float = 0.01  # SparseGPT's damping, a fraction of mean(diag H)
    per_row: bool = False  # magnitude: compare weights within each output row instead of the whole matrix
    true_sequential: bool = False  # re-collect statistics after each group of layers of a block
    include: list[str] = field(default_factory=list)  # globs over layer names; empty = every block linear
    exclude: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)  # e.g. [cuda:0, cuda:1]: data-parallel calibration
    allocation: Any = "uniform"  # uniform | owl | linear, or a list: per-block sparsity (unstructured only)
    owl_m: float = 5.0  # OWL: a weight is an outlier when its Wanda score exceeds owl_m x its block's mean
    owl_lambda: float = 0.08  # OWL / linear: block sparsities spread around prune.sparsity by up to this much


@dataclass
class CalibrationConfig:
    """Where the calibration windows are cut from: a local text file, or a corpus that a package installs."""

    corpus: str = "file"  # file (read `text`) | janeausten (Debian r-cran-janeaustenr; see lottery.llm.corpora)
    text: str | None = "${lottery_text_root:}/wikitext2_test.txt"
    nsamples: int = 128
    seqlen: int = 2048  # capped to the model's maximum length
    seed: int = 0


@dataclass
class EvalConfig:
    metric: str = "perplexity"  # perplexity (causal LMs) | embedding_cosine (encoders, vs the dense model)
    text: str = "${lottery_text_root:}/wikitext2_test.txt"
    seqlen: int = 2048  # perplexity chunk length, capped to the model's maximum length
    max_chunks: int | None = None  # evaluate only the first N chunks (quick runs); null = all
    sentences: int = 512  # embedding_cosine: sentences compared
    batch_size: int = 32


def register_oneshot_configs(cs: ConfigStore) -> None:
    """Register the schemas of the one-shot groups, which their conf/ files inherit."""
    for group, name, node in [("model", "hf_model_schema", HFModelConfig), ("model", "charlm_schema", CharLMConfig),
                              ("prune", "prune_schema", PruneConfig),
                              ("calibration", "calibration_schema", CalibrationConfig),
                              ("eval", "eval_schema", EvalConfig)]:
        cs.store(group=group, name=name, node=node)


def parse_pattern(pattern: str, key: str = "prune.pattern") -> tuple[int, int] | None:
    """(n, m) of an N:M pattern, None for "unstructured" or a structured pattern (`neurons`, `neurons+heads`);
    ConfigError naming `key` otherwise."""
    if pattern == "unstructured" or pattern in STRUCTURED_PATTERNS:
        return None
    if (nm := parse_nm(pattern, key)) is None:
        raise ConfigError(f"{key}={pattern!r} is malformed; use unstructured, N:M with integers (e.g. 2:4), "
                          f"or a structured pattern: {', '.join(STRUCTURED_PATTERNS)}")
    return nm


def is_device(text: Any) -> bool:
    """Is `text` a device this project places models on: cpu, cuda or cuda:N?"""
    return str(text) in ("cpu", "cuda") or str(text).startswith("cuda:")


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def resolve_model_path(name_or_path: str) -> str:
    """`pkg:package/sub/folder` -> the folder inside the installed package; anything else unchanged."""
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    package, _, sub = name_or_path[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.name_or_path={name_or_path!r}: the Python package {package!r} is not installed "
                          f"(pip install {package.replace('_', '-')})")
    return str(Path(next(iter(spec.submodule_search_locations))) / sub)


def gguf_path(name_or_path: str, gguf_file: str) -> Path:
    """The GGUF file `gguf_file` inside the folder (or `pkg:` package) `name_or_path`; ConfigError unless it is
    an existing file that begins with the GGUF magic bytes."""
    folder = resolve_model_path(name_or_path)
    if not _looks_local(folder):
        raise ConfigError(f"model.gguf_file={gguf_file!r} needs model.name_or_path to be a local folder or "
                          f"pkg:<package>; {name_or_path!r} looks like a hub name (this project loads GGUF files "
                          "offline only)")
    file = Path(folder).expanduser() / gguf_file
    if not file.is_file():
        present = sorted(p.name for p in Path(folder).expanduser().glob("*.gguf")) if Path(folder).is_dir() else []
        raise ConfigError(f"model.gguf_file={gguf_file!r}: no such file in {name_or_path!r} "
                          f"(GGUF files there: {', '.join(present) or 'none'})")
    with open(file, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ConfigError(f"model.gguf_file={gguf_file!r}: {file} is not a GGUF file (it does not begin with "
                              "the bytes 'GGUF')")
    return file


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).expanduser().exists() or path.count("/") > 1


def _check_model(model: DictConfig) -> None:
    if model.kind == "charlm":
        for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "seqlen", "batch_size", "steps"):
            if model[key] <= 0:
                raise ConfigError(f"model.{key}={model[key]} must be a positive integer")
        if model.hidden_size % model.num_heads:
            raise ConfigError(f"model.hidden_size={model.hidden_size} must be divisible by "
                              f"model.num_heads={model.num_heads}")
        if not 0 < model.val_fraction < 1:
            raise ConfigError(f"model.val_fraction={model.val_fraction} must be in (0, 1)")
        if not Path(model.text).is_file():
            raise ConfigError(f"model.text={model.text!r}: training text file not found (set LOTTERY_TEXT or "
                              "model.text)")
        return
    if OmegaConf.is_missing(model, "name_or_path"):
        raise ConfigError("model.name_or_path is not set; give a hub name or a local model folder")
    if model.get("gguf_file"):
        gguf_path(model.name_or_path, model.gguf_file)
        return
    path = resolve_model_path(model.name_or_path)
    if _looks_local(path):
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"model.name_or_path={model.name_or_path!r}: no such model folder")
        if not (folder / "config.json").is_file() or not any((folder / f).is_file() for f in WEIGHT_FILES):
            raise ConfigError(f"model.name_or_path={model.name_or_path!r}: the folder has no config.json or no "
                              f"weights (expected one of {', '.join(WEIGHT_FILES)})")


def allocations(prune: DictConfig) -> list[str]:
    """The configured allocations, as a list (`prune.allocation` takes one name or a list)."""
    return [str(a) for a in as_list(prune.get("allocation", "uniform"))]


def _check_allocation(p: DictConfig) -> None:
    """Known allocations; owl_m > 0; lambda keeps every block of a linear ramp in [0, 1); N:M needs uniform."""
    chosen = allocations(p)
    for allocation in chosen:
        check_choice("prune.allocation", allocation, ALLOCATIONS)
    m, lam, s = float(p.get("owl_m", 5.0)), float(p.get("owl_lambda", 0.08)), float(p.sparsity)
    if m <= 0:
        raise ConfigError(f"prune.owl_m={m} must be > 0 (a weight is an outlier above owl_m x its block's mean score)")
    patterns = [str(x) for x in as_list(p.pattern)]
    if any(a != "uniform" for a in chosen) and "unstructured" in patterns and not (0 <= lam <= s and lam < 1 - s):
        raise ConfigError(f"prune.owl_lambda={lam} is out of range; with prune.sparsity={s} it must be in "
                          f"[0, min(s, 1 - s)) = [0, {min(s, 1 - s):g})")
    nm = [x for x in patterns if x != "unstructured"]
    if nm and "uniform" not in chosen:
        raise ConfigError(f"prune.allocation={chosen} has no uniform entry, but prune.pattern {nm[0]} is N:M or "
                          "structured, which are uniform by definition; add uniform to prune.allocation or drop that "
                          "pattern")


def validate_oneshot(cfg: DictConfig) -> None:
    """Check a one-shot config without loading anything; raise ConfigError naming the key and allowed values."""
    for group in GROUPS:
        if cfg.get(group) is None:
            raise ConfigError(f"{group} is not set; a oneshot run needs the {group} config group (use +exp=oneshot_llm)")
    check_choice("model.kind", cfg.model.get("kind"), MODEL_KINDS)
    check_choice("model.dtype", cfg.model.dtype, DTYPES)
    for entry in cfg.prune.get("devices") or []:
        if not is_device(entry):
            raise ConfigError(f"prune.devices entry {entry!r} is not a device; use cpu, cuda or cuda:N")
    if not is_device(cfg.model.device):
        raise ConfigError(f"model.device={str(cfg.model.device)!r} is not allowed; choose cpu, cuda or cuda:N")
    p = cfg.prune
    for method in as_list(p.method):
        check_choice("prune.method", method, METHODS)
    if not 0.0 <= float(p.sparsity) < 1.0:
        raise ConfigError(f"prune.sparsity={p.sparsity} is out of range; it must be in [0, 1)")
    for pattern in as_list(p.pattern):
        _, m = parse_pattern(str(pattern)) or (0, 0)
        if m and p.blocksize % m:
            raise ConfigError(f"prune.blocksize={p.blocksize} must be a multiple of M={m} (prune.pattern={pattern})")
    if p.blocksize <= 0:
        raise ConfigError(f"prune.blocksize={p.blocksize} must be a positive integer")
    _check_allocation(p)
    check_structured_prune([str(x) for x in as_list(p.method)], [str(x) for x in as_list(p.pattern)],
                           list(p.include), list(p.exclude))
    if p.percdamp < 0:
        raise ConfigError(f"prune.percdamp={p.percdamp} must be >= 0")
    c = cfg.calibration
    if c.nsamples <= 0 or c.seqlen <= 1:
        raise ConfigError(f"calibration.nsamples={c.nsamples} must be > 0 and calibration.seqlen={c.seqlen} > 1")
    corpus = c.get("corpus", "file")
    check_choice("calibration.corpus", corpus, CORPORA)
    if cfg.model.kind == "hf" and corpus == "file" and not (c.text and Path(c.text).is_file()):
        raise ConfigError(f"calibration.text={c.text!r}: calibration text file not found (set LOTTERY_TEXT or "
                          "calibration.text)")
    if cfg.model.kind == "hf" and corpus != "file":
        check_corpus(corpus)
    e = cfg.eval
    check_choice("eval.metric", e.metric, EVAL_METRICS)
    if e.seqlen <= 1 or e.sentences <= 0 or e.batch_size <= 0 or (e.max_chunks is not None and e.max_chunks <= 0):
        raise ConfigError("eval.seqlen must be > 1; eval.sentences, eval.batch_size and eval.max_chunks > 0")
    if cfg.model.kind == "hf" and not Path(e.text).is_file():
        raise ConfigError(f"eval.text={e.text!r}: evaluation text file not found (set LOTTERY_TEXT or eval.text)")
    if cfg.model.kind == "charlm" and e.metric != "perplexity":
        raise ConfigError("eval.metric must be perplexity for model.kind=charlm")
    _check_model(cfg.model)
