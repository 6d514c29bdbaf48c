"""GGUF files as a model source: a tiny Llama written with GGUFWriter converts to the same logits, is cached by
its sha256, and bad GGUF input is one ConfigError line (exit 2 from the CLI) before any run folder exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from helpers import REPO, make_config

from lottery.errors import ConfigError
from lottery.llm.job import run
from lottery.llm.schema import validate_oneshot
from lottery.llm.sources import gguf_model_folder, sha256_file
from lottery.tracking.atomic import atomic_dir

gguf = pytest.importorskip("gguf")
from tiny_gguf import tiny_llama, write_gguf  # noqa: E402

FAST = ["calibration.corpus=file", "calibration.text=${lottery_text_root:}/wikitext2_test.txt",
        "calibration.nsamples=4", "calibration.seqlen=32", "eval.seqlen=32", "eval.max_chunks=3",
        "progress_bar=false", "logger=none"]


@pytest.fixture
def gguf_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ggufs"
    folder.mkdir()
    write_gguf(tiny_llama(), folder / "tiny.gguf")
    return folder


def test_converted_gguf_gives_the_original_logits_and_is_cached(tmp_path: Path, gguf_folder: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    model_dir = gguf_model_folder(str(gguf_folder), "tiny.gguf", store)
    assert model_dir.parent.name.startswith("gguf_") and (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file() and not list(store.rglob(".*.tmp"))
    converted = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.randint(0, 260, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the written weights came from tiny_llama(): q/k permuted there, un-permuted on read
        assert torch.allclose(converted(ids).logits, tiny_llama()(ids).logits, atol=1e-5)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.convert_ids_to_tokens(tokenizer(" the")["input_ids"]) == ["Ġthe"]  # the file's merges

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("lottery.llm.sources.convert_gguf", no_conversion)
    assert gguf_model_folder(str(gguf_folder), "tiny.gguf", store) == model_dir  # cached: no second conversion
    write_gguf(tiny_llama(seed=1), gguf_folder / "tiny.gguf")  # another file under the same name: a new key
    with pytest.raises(AssertionError, match="converted again"):
        gguf_model_folder(str(gguf_folder), "tiny.gguf", store)


def test_oneshot_job_prunes_a_gguf_model(tmp_path: Path, gguf_folder: Path, capsys) -> None:
    cfg = make_config(["+exp=oneshot_llm", f"model.name_or_path={gguf_folder}", "model.gguf_file=tiny.gguf",
                       "prune.method=wanda", "prune.pattern='2:4'", *FAST])
    rows = run(cfg)
    assert rows[0]["nm_valid"] is True and rows[0]["total_sparsity"] == pytest.approx(0.5)
    sha = sha256_file(gguf_folder / "tiny.gguf")
    records = [p.read_text() for p in (tmp_path / "runs").glob("gguf_*/source.json")]
    assert len(records) == 1 and sha in records[0]
    assert "calibration: " in capsys.readouterr().out


@pytest.mark.parametrize(("name", "file", "message"), [
    ("{folder}", "absent.gguf", "model.gguf_file='absent.gguf': no such file in .* \\(GGUF files there: junk.gguf, tiny.gguf\\)"),
    ("{folder}", "junk.gguf", "is not a GGUF file"),
    ("HuggingFaceTB/SmolLM2-135M", "x.gguf", "needs model.name_or_path to be a local folder or pkg:"),
    ("pkg:no_such_package_xyz", "x.gguf", "the Python package 'no_such_package_xyz' is not installed"),
])
def test_bad_gguf_input_is_one_config_error(gguf_folder: Path, name: str, file: str, message: str) -> None:
    (gguf_folder / "junk.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    cfg = make_config(["+exp=oneshot_llm", f"model.name_or_path={name.format(folder=gguf_folder)}",
                       f"model.gguf_file={file}", *FAST])
    with pytest.raises(ConfigError, match=message) as err:
        validate_oneshot(cfg)
    assert "\n" not in str(err.value)


def test_cli_exits_2_on_a_file_that_is_not_gguf(tmp_path: Path, gguf_folder: Path) -> None:
    (gguf_folder / "junk.gguf").write_bytes(b"\x00" * 64)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lottery.run", "+exp=oneshot_llm", f"model.name_or_path={gguf_folder}",
                           "model.gguf_file=junk.gguf", *FAST], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.gguf_file='junk.gguf'"), proc.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_a_killed_conversion_leaves_no_model_folder(tmp_path: Path) -> None:
    target = tmp_path / "gguf_x" / "model"
    target.parent.mkdir()

    def dies(folder: Path) -> None:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_dir(target, dies)
    assert not target.exists()  # only the hidden .model.tmp is left; the next attempt removes it
    atomic_dir(target, lambda folder: (folder.mkdir(), (folder / "config.json").write_text("{}")))
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"] and (target / "config.json").exists()
