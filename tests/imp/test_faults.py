"""Distributed training and fault tolerance through the real command line: CPU DDP, kill -9, corrupt files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, TINY

from lottery.errors import StoreError
from lottery.imp.compare import compare_runs
from lottery.tracking import load_torch


def _cli(args: list[str], cwd, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "lottery.run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _only_run(root):
    (path,) = root.glob("imp_*")
    return path


def test_cpu_ddp_matches_one_process(tmp_path, mnist_root) -> None:
    common = [*TINY, "imp.levels=1"]
    code, _, err = _finish(_cli([*common, "trainer=ddp_cpu", f"store.root={tmp_path / 'ddp'}"], tmp_path))
    assert code == 0, err[-3000:]
    code, _, err = _finish(_cli([*common, "logger=none", f"store.root={tmp_path / 'one'}"], tmp_path))
    assert code == 0, err[-3000:]
    ddp, one = _only_run(tmp_path / "ddp"), _only_run(tmp_path / "one")
    # Each rank computed its mask itself (and checked the others agree); they equal the 1-process masks.
    assert [r["jaccard"] for r in compare_runs(ddp, one)] == [1.0, 1.0]
    for level in ("level_00", "level_01"):
        a = json.loads((ddp / level / "metrics.json").read_text())
        b = json.loads((one / level / "metrics.json").read_text())
        assert abs(a["final_test_acc"] - b["final_test_acc"]) <= 0.02
    # Only rank 0 wrote W&B runs: one per level plus the summary.
    assert len(list((ddp / "wandb").glob("offline-run-*"))) == 3


def test_kill_9_mid_level_then_resume_bitwise(tmp_path, mnist_root) -> None:
    args = [*TINY, "imp.levels=1", "training.iterations=200", "training.checkpoint_every=40", "logger=none"]
    code, _, err = _finish(_cli([*args, f"store.root={tmp_path / 'clean'}"], tmp_path))
    assert code == 0, err[-3000:]

    killed_root = tmp_path / "killed"
    proc = _cli([*args, f"store.root={killed_root}"], tmp_path, start_new_session=True)
    deadline = time.time() + 240
    while not list(killed_root.glob("imp_*/level_01/last.ckpt")):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint of level 1 appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = _only_run(killed_root)
    assert not (killed / "level_01" / "metrics.json").exists()

    code, _, err = _finish(_cli([*args, f"store.root={killed_root}"], tmp_path))
    assert code == 0, err[-3000:]
    assert not list(killed.rglob(".*.tmp"))
    clean = _only_run(tmp_path / "clean")
    for level in ("level_00", "level_01"):
        for name in ("mask.pt", "final.pt"):
            a, b = load_torch(clean / level / name), load_torch(killed / level / name)
            assert all(torch.equal(a[k], b[k]) for k in a), (level, name)
        ma = json.loads((clean / level / "metrics.json").read_text())
        mb = json.loads((killed / level / "metrics.json").read_text())
        ma.pop("train_seconds"), mb.pop("train_seconds")
        assert ma == mb, level


def _run_in_process(cfg_args: list[str]):
    from helpers import make_config

    from lottery.imp.job import run

    return run(make_config(cfg_args))


@pytest.mark.parametrize("victim", ["level_01/final.pt", "level_01/mask.pt", "level_00/metrics.json", "rewind.pt"])
def test_corrupt_file_is_named_and_redo_fixes_it(tmp_path, mnist_root, victim: str) -> None:
    args = [*TINY, "imp.levels=2", "imp.rewind=iteration", "imp.rewind_to=20", "logger=none",
            f"store.root={tmp_path / 'runs'}"]
    _run_in_process(args)
    run = _only_run(tmp_path / "runs")
    reference = load_torch(run / "level_02" / "final.pt")
    path = run / victim
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(StoreError) as info:
        _run_in_process(args)
    assert str(path) in str(info.value) and "store.on_corrupt=redo" in str(info.value)

    _run_in_process([*args, "store.on_corrupt=redo"])
    assert json.loads((run / "level_02" / "metrics.json").read_text())["level"] == 2
    redone = load_torch(run / "level_02" / "final.pt")
    assert all(torch.equal(reference[k], redone[k]) for k in reference)


def test_corrupt_file_through_the_command_line_exits_2(tmp_path, mnist_root) -> None:
    args = [*TINY, "imp.levels=0", "logger=none", f"store.root={tmp_path / 'runs'}"]
    _run_in_process(args)
    path = _only_run(tmp_path / "runs") / "level_00" / "final.pt"
    path.write_bytes(b"not a checkpoint")
    code, _, err = _finish(_cli(args, tmp_path))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and str(path) in lines[0], lines
