"""`python -m lottery.run`: the main command end to end, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO, TINY
from hypothesis import given, settings
from hypothesis import strategies as st

from lottery.run import precheck


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lottery.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_main_command_runs_and_prints_summary(tmp_path, mnist_root) -> None:
    result = _cli(*TINY, "imp.levels=1", "logger=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "% remaining" in result.stdout and "80.04" in result.stdout
    runs = list((tmp_path / "runs").glob("imp_*"))
    assert len(runs) == 1 and (runs[0] / "level_01" / "metrics.json").exists()
    # The console says what `auto` became, and the run folder's config records it (not `auto`).
    assert "trainer.accelerator=auto -> " in result.stdout and "training.engine=auto -> " in result.stdout
    recorded = (runs[0] / "config.yaml").read_text()
    assert "engine: auto" not in recorded and "accelerator: auto" not in recorded


BAD = [
    ("pruning.rate=1.5", "pruning.rate"),
    ("pruning.rate=-0.1", "pruning.rate"),
    ("pruning.output_rate=1.0", "pruning.output_rate"),
    ("imp.levels=-1", "imp.levels"),
    ("model.name=resnet_9000", "model.name"),
    ("data.name=imagenet", "data.name"),
    ("imp.rewind=iteration imp.rewind_to=60000", "imp.rewind_to"),
    ("imp.rewind=sideways", "imp.rewind"),
    ("training.optimizer=rmsprop", "training.optimizer"),
    ("imp.levels=abc", "imp.levels"),
    ("+exp=no_such_experiment", "exp"),
    ("model=no_such_model", "model"),
    ("training.iterations=3zz", "training.iterations"),
    ("pruning.pattern=4:2", "pruning.pattern"),
    ("pruning.pattern=diagonal", "pruning.pattern"),
    ("pruning.pattern=neurons pruning=global", "pruning.pattern"),
    ("training.batch_size=0", "training.batch_size"),
    ("training.lr=-1", "training.lr"),
    ("trainer=ddp_cpu training.batch_size=61", "training.batch_size"),
    ("store.on_corrupt=ignore", "store.on_corrupt"),
    ("+branch=random_reinit branch.name=lucky", "branch.name"),
    ("+branch=retrain branch.levels=[99]", "branch.levels"),
    ("logger.mode=sometimes", "logger.mode"),
    ("data.val_size=60000", "data.val_size"),
    ("training.precision=fp8", "training.precision"),
    ("training.engine=turbo", "training.engine"),
]


def _args(override: str) -> list[str]:
    return override.split() if override.startswith("+exp=") else ["+exp=imp_lenet", *override.split()]


@pytest.mark.parametrize("override,needle", BAD)
def test_precheck_names_the_bad_key_in_one_line(override: str, needle: str) -> None:
    problem = precheck(_args(override))
    assert problem is not None and needle in problem and "\n" not in problem, problem


def test_precheck_accepts_good_commands() -> None:
    assert precheck(["+exp=imp_lenet", "imp.levels=5", "training.iterations=2000", "seed=3"]) is None


@pytest.mark.parametrize("override,needle", [BAD[0], BAD[8], BAD[10]])
def test_bad_config_exits_2_with_one_line(tmp_path, override: str, needle: str) -> None:
    result = _cli(*_args(override), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout[-500:], result.stderr[-1500:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert not (tmp_path / "runs").exists(), "a bad command left a folder behind"


def test_unwritable_store_root_is_rejected(tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    problem = precheck(["+exp=imp_lenet", f"store.root={blocker / 'runs'}"])
    assert problem is not None and "store.root" in problem and str(blocker) in problem


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=10))
def test_any_rate_is_accepted_exactly_when_in_range(rate: float) -> None:
    problem = precheck(["+exp=imp_lenet", f"pruning.rate={rate!r}"])
    if 0 <= rate < 1:
        assert problem is None
    else:
        assert problem is not None and "pruning.rate" in problem


def test_missing_data_is_one_clear_line(tmp_path) -> None:
    empty = tmp_path / "nodata"
    result = _cli("+exp=imp_lenet", f"data.root={empty}", "data.download=false", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(empty / "MNIST" / "raw") in lines[0], lines
    assert not (tmp_path / "runs").exists(), f"missing data left {list((tmp_path / 'runs').rglob('*'))} behind"


def test_refused_run_keeps_other_hydra_folders(tmp_path) -> None:
    """Only the refused run's own Hydra folder goes: an earlier run's folder of the same day stays."""
    earlier = tmp_path / "runs" / "hydra" / "2026-01-01" / "00-00-00"
    earlier.mkdir(parents=True)
    result = _cli("+exp=imp_lenet", f"data.root={tmp_path / 'nodata'}", "data.download=false",
                  "hydra.run.dir=runs/hydra/2026-01-01/00-00-01", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-1500:]
    assert earlier.exists() and not (earlier.parent / "00-00-01").exists()
