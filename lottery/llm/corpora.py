"""Calibration corpora that a package installs, so that calibration needs no network and no evaluation text.

`janeausten`: Jane Austen's six completed novels (Project Gutenberg texts, about 730,000 words), as Debian's
`r-cran-janeaustenr` installs them: an R lazy-load database under `<R library>/janeaustenr/data/`, read here
with PyPI `rdata`. R itself is not needed: `apt-get install r-cran-janeaustenr`, or unpack the .deb anywhere
(`apt-get download r-cran-janeaustenr && dpkg -x r-cran-janeaustenr_*.deb DIR`) and point `R_LIBS_SITE` at
`DIR/usr/lib/R/site-library`. The novels share no text with WikiText-2 (Wikipedia articles), the evaluation set.

This module is imported by the config validation: nothing heavy at import time.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import warnings
import zlib
from pathlib import Path

from lottery.errors import ConfigError

CORPORA = ("file", "janeausten")
JANEAUSTEN_DEB, JANEAUSTEN_PKG = "r-cran-janeaustenr", "janeaustenr"
# janeaustenr's own order (austen_books()): publication order.
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
R_LIBRARY_DIRS = ("/usr/local/lib/R/site-library", "/usr/lib/R/site-library", "/usr/lib/R/library")


def r_library_dirs() -> list[Path]:
    """Where R looks for installed packages: $R_LIBS, $R_LIBS_USER, $R_LIBS_SITE (in R's order), then Debian's."""
    dirs = [d for var in ("R_LIBS", "R_LIBS_USER", "R_LIBS_SITE") for d in os.environ.get(var, "").split(":") if d]
    return [Path(d).expanduser() for d in (*dirs, *R_LIBRARY_DIRS)]


def find_janeaustenr() -> Path | None:
    """The `janeaustenr/data` folder of the first R library that has it, or None."""
    for lib in r_library_dirs():
        data = lib / JANEAUSTEN_PKG / "data"
        if (data / "Rdata.rdb").is_file() and (data / "Rdata.rdx").is_file():
            return data
    return None


def _missing_janeausten() -> str:
    return (f"calibration.corpus=janeausten needs the Debian package {JANEAUSTEN_DEB} (apt-get install "
            f"{JANEAUSTEN_DEB}, or unpack it with dpkg -x and set R_LIBS_SITE to its usr/lib/R/site-library; "
            f"searched {', '.join(str(d) for d in r_library_dirs())}) and the Python package rdata (pip install "
            "rdata); or use calibration.corpus=file calibration.text=PATH")


def check_corpus(name: str) -> None:
    """ConfigError naming what to install when corpus `name` is not available (cheap: no file is parsed)."""
    if name == "janeausten" and (find_janeaustenr() is None or importlib.util.find_spec("rdata") is None):
        raise ConfigError(_missing_janeausten())


def _reflow(lines: list[str]) -> str:
    """Gutenberg lines -> one line per paragraph, paragraphs separated by a blank line (as in WikiText)."""
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def read_rdb_objects(data_dir: Path, names: tuple[str, ...]) -> dict[str, object]:
    """Objects of an R lazy-load database (`Rdata.rdx` index + `Rdata.rdb` blobs), converted by `rdata`."""
    import rdata  # an optional dependency (the `llm` extra), heavy (pandas, xarray): only when a corpus is read

    def parse(raw: bytes) -> object:
        with warnings.catch_warnings():  # rdata warns that a bare serialization "is assumed RDS": it is
            warnings.simplefilter("ignore", UserWarning)
            return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = parse(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))["variables"]
    out = {}
    with open(data_dir / "Rdata.rdb", "rb") as f:
        for name in names:
            offset, length = (int(x) for x in index[name])
            f.seek(offset)
            blob = f.read(length)
            # Each blob: a 4-byte big-endian uncompressed length, then zlib data (R's default compress = TRUE).
            out[name] = parse(zlib.decompress(blob[4:]))
    return out


def janeausten_text() -> tuple[str, str]:
    """Jane Austen's six novels as one text, and a line saying where it came from."""
    data = find_janeaustenr()
    if data is None or importlib.util.find_spec("rdata") is None:
        raise ConfigError(_missing_janeausten())
    novels = read_rdb_objects(data, NOVELS)
    text = "\n\n".join(_reflow([str(x) for x in novels[name]]) for name in NOVELS)
    return text, f"Jane Austen's six novels ({JANEAUSTEN_DEB}, {data.parent}; {len(text):,} characters)"

