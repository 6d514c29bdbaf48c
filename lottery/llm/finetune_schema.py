"""Config schema of the sparse fine-tuning job (`job: finetune`, `+exp=oneshot_finetune`) and its cheap validation.

Imports no model code: `lottery.run` validates every command line with it before Hydra starts, so a bad source
or value ends the run with one line and exit 2 before any run folder exists.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from lottery.config import check_choice
from lottery.errors import ConfigError
from lottery.llm.corpora import CORPORA, check_corpus
from lottery.llm.schema import is_device

MODES = ("full", "lora")
SCHEDULES = ("cosine", "constant")
LOSSES = ("lm", "distill")
PRECISIONS = ("32-true", "bf16-mixed")
# The config group of the job, selected with its defaults by conf/job/finetune.yaml.
GROUPS = ("finetune",)
MASKS_FILE = "masks.safetensors"  # as lottery.llm.checkpoint writes it (not imported: it loads transformers)


@dataclass
class FinetuneConfig:
    """What is fine-tuned (a finished one-shot variant), how, and on which text."""

    source: str = MISSING  # a variant folder: absolute, relative to store.root, or just <method>_<pattern>
    mode: str = "full"  # full: masked weights and gradients | lora: peft adapters merged under the mask
    loss: str = "lm"  # lm: next-token cross-entropy | distill: KL from the dense model's next-token distribution
    steps: int = 200
    batch_size: int = 8
    seqlen: int = 1024  # capped to the model's maximum length
    lr: float = 1e-4
    schedule: str = "cosine"  # cosine: linear warmup, then cosine to 0 | constant: linear warmup, then flat
    warmup: int = 20  # steps of linear warmup
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    corpus: str = "janeausten"  # janeausten | file (read `text`); never the evaluation text
    text: str | None = None
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    train_embeddings: bool = False  # full mode: also train the token embeddings and the LM head
    precision: str = "32-true"  # Lightning spellings: 32-true | bf16-mixed
    device: str | None = None  # null: the source run's model.device
    checkpoint_every: int = 50  # steps between resume checkpoints (not part of the run hash)


def register_finetune_configs(cs: ConfigStore) -> None:
    """Register the schema of the `finetune` group, which conf/finetune/ inherits."""
    cs.store(group="finetune", name="finetune_schema", node=FinetuneConfig)


def _finished(folder: Path) -> bool:
    return (folder / "result.json").is_file() and (folder / "model" / MASKS_FILE).is_file()


def resolve_source(source: str, store_root: str | Path) -> Path:
    """The variant folder `finetune.source` names; ConfigError (one line) unless it is a finished variant.

    `source` is an absolute folder, a folder relative to `store_root` (`oneshot_<hash>/<method>_<pattern>`), or a
    bare `<method>_<pattern>` (`:` may stand for `of`) that exactly one one-shot run under `store_root` has.
    """
    root = Path(store_root).expanduser()
    given = str(source)
    if "/" not in given:
        name = given.replace(":", "of")
        found = sorted(p for p in root.glob(f"oneshot_*/{name}") if _finished(p))
        if len(found) != 1:
            which = ", ".join(f"{p.parent.name}/{p.name}" for p in found) if found else "none finished"
            raise ConfigError(f"finetune.source={given!r} must name one finished variant; under store.root={root} "
                              f"found: {which}. Give finetune.source=oneshot_<hash>/{name} or an absolute folder")
        return found[0]
    folder = Path(given).expanduser()
    folder = folder if folder.is_absolute() else root / folder
    if not folder.is_dir():
        raise ConfigError(f"finetune.source={given!r}: no such variant folder ({folder}); run the one-shot job "
                          "first or give oneshot_<hash>/<method>_<pattern> under store.root")
    if not (folder / "result.json").is_file():
        raise ConfigError(f"finetune.source={given!r}: the variant is not finished (no result.json in {folder}); "
                          "rerun its one-shot command to finish it")
    if not (folder / "model" / MASKS_FILE).is_file():
        raise ConfigError(f"finetune.source={given!r}: {folder}/model has no {MASKS_FILE}; only a pruned one-shot "
                          "variant can be fine-tuned")
    if not (folder.parent / "config.yaml").is_file():
        raise ConfigError(f"finetune.source={given!r}: no config.yaml in {folder.parent}; the source must be a "
                          "variant folder inside a one-shot run folder")
    return folder


def source_config(folder: Path) -> DictConfig:
    """The one-shot config of the run that made variant `folder`, with its store root where the folder is now."""
    cfg = OmegaConf.load(folder.parent / "config.yaml")
    cfg.store.root = str(folder.parent.parent)  # the dense cache and the GGUF conversion live beside the run
    return cfg


def validate_finetune(cfg: DictConfig) -> Path:
    """Check a fine-tuning config without loading a model; return the source variant folder.

    Raises ConfigError naming the key and the allowed values.
    """
    f = cfg.get("finetune")
    if f is None:
        raise ConfigError("finetune is not set; a finetune run needs the finetune config group "
                          "(use +exp=oneshot_finetune)")
    if OmegaConf.is_missing(f, "source"):
        raise ConfigError("finetune.source is not set; give a one-shot variant folder, e.g. "
                          "finetune.source=oneshot_<hash>/wanda_2of4")
    check_choice("finetune.mode", f.mode, MODES)
    check_choice("finetune.schedule", f.schedule, SCHEDULES)
    check_choice("finetune.loss", f.loss, LOSSES)
    check_choice("finetune.precision", f.precision, PRECISIONS)
    for key in ("steps", "batch_size", "checkpoint_every", "lora_r"):
        if f[key] <= 0:
            raise ConfigError(f"finetune.{key}={f[key]} must be a positive integer")
    if f.seqlen <= 1:
        raise ConfigError(f"finetune.seqlen={f.seqlen} must be > 1")
    if not f.lr > 0 or f.lora_alpha <= 0:
        raise ConfigError(f"finetune.lr={f.lr} and finetune.lora_alpha={f.lora_alpha} must be > 0")
    if not 0 <= f.warmup < f.steps:
        raise ConfigError(f"finetune.warmup={f.warmup} must be in [0, finetune.steps={f.steps})")
    if f.weight_decay < 0 or f.grad_clip < 0 or not 0 <= f.lora_dropout < 1:
        raise ConfigError("finetune.weight_decay and finetune.grad_clip must be >= 0, finetune.lora_dropout in [0, 1)")
    if f.mode == "lora" and importlib.util.find_spec("peft") is None:
        raise ConfigError("finetune.mode=lora needs the Python package peft (pip install peft, or the .[llm] extra)")
    if f.train_embeddings and f.mode != "full":
        raise ConfigError("finetune.train_embeddings=true needs finetune.mode=full (LoRA trains adapters only)")
    device = f.device
    if device is not None and not is_device(device):
        raise ConfigError(f"finetune.device={device!r} is not allowed; choose null (the source's), cpu, cuda or cuda:N")
    check_choice("finetune.corpus", f.corpus, CORPORA)
    folder = resolve_source(f.source, cfg.store.root)
    src = source_config(folder)
    if src.model.get("kind") != "hf" or src.eval.get("metric") != "perplexity":
        raise ConfigError(f"finetune.source={f.source!r}: only causal Hugging Face models evaluated by perplexity "
                          f"can be fine-tuned (this run has model.kind={src.model.get('kind')}, "
                          f"eval.metric={src.eval.get('metric')})")
    if f.corpus == "file":
        if not (f.text and Path(f.text).is_file()):
            raise ConfigError(f"finetune.text={f.text!r}: training text file not found (finetune.corpus=file)")
        if Path(f.text).resolve() == Path(src.eval.text).resolve():
            raise ConfigError(f"finetune.text={f.text!r} is the source's evaluation text; fine-tune on a disjoint "
                              "text (default finetune.corpus=janeausten)")
    else:
        check_corpus(f.corpus)
    return folder
