"""The Jane Austen calibration corpus: found where Debian's r-cran-janeaustenr installs it, read with rdata,
disjoint from the WikiText-2 evaluation text; a clear one-line error naming the packages when it is absent."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import SHARED_DATA, make_config

from lottery.errors import ConfigError
from lottery.llm import corpora
from lottery.llm.calibration import calibration_text
from lottery.llm.schema import validate_oneshot

HAVE_AUSTEN = corpora.find_janeaustenr() is not None and importlib.util.find_spec("rdata") is not None
needs_austen = pytest.mark.skipif(not HAVE_AUSTEN, reason="r-cran-janeaustenr (R_LIBS_SITE) or rdata not installed")
WIKITEXT = SHARED_DATA / "text" / "wikitext2_test.txt"


def test_reflow_joins_lines_into_paragraphs() -> None:
    lines = ["CHAPTER 1", "", "", "It is a truth universally", "acknowledged.", "", "Next  one."]
    assert corpora._reflow(lines) == "CHAPTER 1\n\nIt is a truth universally acknowledged.\n\nNext  one."


def test_missing_corpus_names_the_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("R_LIBS", "R_LIBS_USER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("R_LIBS_SITE", str(tmp_path / "no-r-library"))
    monkeypatch.setattr(corpora, "R_LIBRARY_DIRS", ())
    cfg = make_config(["+exp=oneshot_llm", f"model.name_or_path={tmp_path}"])
    assert cfg.calibration.corpus == "janeausten"  # the default of the LLM experiments
    with pytest.raises(ConfigError) as err:
        validate_oneshot(cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith("calibration.corpus=janeausten needs the Debian package "
                                                      "r-cran-janeaustenr")
    assert "pip install rdata" in message and str(tmp_path / "no-r-library") in message
    with pytest.raises(ConfigError, match="r-cran-janeaustenr"):
        calibration_text("janeausten")


def test_unknown_corpus_is_a_config_error(tmp_path: Path) -> None:
    cfg = make_config(["+exp=oneshot_llm", f"model.name_or_path={tmp_path}", "calibration.corpus=c4"])
    with pytest.raises(ConfigError, match="calibration.corpus='c4' is not allowed; choose one of file, janeausten"):
        validate_oneshot(cfg)


@pytest.mark.slow  # rdata parses the novels object by object: ~10 s idle, 30 s on a busy 2-core machine
@needs_austen
def test_janeausten_is_the_six_novels_and_shares_no_text_with_wikitext() -> None:
    text, described = calibration_text("janeausten")
    assert described.startswith("Jane Austen's six novels (r-cran-janeaustenr")
    assert text.startswith("SENSE AND SENSIBILITY")
    titles = ["PRIDE AND PREJUDICE", "MANSFIELD PARK", "EMMA", "NORTHANGER ABBEY", "Persuasion"]
    assert all(f"\n\n{t}\n\n" in text for t in titles)
    # Pride and Prejudice's first sentence, which spans two lines in the Gutenberg text, is one paragraph here.
    assert ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
            "in want of a wife.") in text
    assert 3_900_000 < len(text) < 4_200_000
    if not WIKITEXT.exists():
        pytest.skip(f"{WIKITEXT} not available")

    def shingles(s: str, n: int = 10) -> set[str]:
        words = s.lower().split()
        return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}

    assert not shingles(text) & shingles(WIKITEXT.read_text(encoding="utf-8"))  # no 10-word run in common
