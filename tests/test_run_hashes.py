"""Run hashes are users' data: every experiment's hash (and a few common overrides') is pinned here.

The fixture `fixtures/run_hashes.json` was written from the code before the "house" redesign. A change that
moves a hash on purpose must say so in the README and regenerate the fixture:

    python tests/test_run_hashes.py --write
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import CONF_DIR, make_config  # noqa: E402

from lottery.imp.auto import resolve_auto  # noqa: E402
from lottery.tracking.store import config_hash  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_hashes.json"
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "exp").glob("*.yaml"))
# Common command lines beyond the bare experiments (each a list of overrides after +exp=...).
OVERRIDES = {
    "imp_lenet seed=3": ["+exp=imp_lenet", "seed=3"],
    "imp_lenet small": ["+exp=imp_lenet", "imp.levels=3", "training.iterations=3000"],
    "imp_lenet global": ["+exp=imp_lenet", "pruning=global"],
    "imp_lenet rewind 500": ["+exp=imp_lenet", "imp.rewind=iteration", "imp.rewind_to=500"],
    "imp_lenet lr rewind": ["+exp=imp_lenet", "imp.rewind=lr"],
    "imp_lenet 2:4": ["+exp=imp_lenet", "pruning.pattern=2:4"],
    "imp_lenet neurons": ["+exp=imp_lenet", "pruning.pattern=neurons", "pruning.norm=l2"],
    "imp_lenet fabric": ["+exp=imp_lenet", "training.engine=fabric"],
    "imp_lenet batched gpu": ["+exp=imp_lenet", "training.engine=batched", "trainer=gpu"],
    "imp_lenet oneshot": ["+exp=imp_lenet", "imp.oneshot=true"],
    "imp_lenet branch": ["+exp=imp_lenet", "+branch=random_reinit"],
    "imp_lenet fashion": ["+exp=imp_lenet", "data=fashion_mnist"],
    "imp_resnet20 synthetic": ["+exp=imp_resnet20", "data=synthetic_cifar", "training.iterations=20",
                               "imp.rewind_to=5"],
    "oneshot_llm wanda 2:4": ["+exp=oneshot_llm", "prune.method=wanda", "prune.pattern=2:4"],
    "oneshot_charlm magnitude": ["+exp=oneshot_charlm", "prune.method=magnitude"],
}


# Explicit `training.engine=trainer` runs of every IMP experiment: their folders stay where they were when the
# default engine became `auto` (issue 18).
OVERRIDES |= {f"{exp} engine=trainer": [f"+exp={exp}", "training.engine=trainer"]
              for exp in EXPERIMENTS if exp.startswith("imp_")}
OVERRIDES["imp_lenet ddp_cpu"] = ["+exp=imp_lenet", "trainer=ddp_cpu"]  # auto -> trainer: the pre-auto hash
OVERRIDES["imp_lenet gpu auto engine"] = ["+exp=imp_lenet", "trainer=gpu"]  # resolves to batched
OVERRIDES["imp_lenet engine=trainer gpu"] = ["+exp=imp_lenet", "training.engine=trainer", "trainer=gpu"]


def _fixed_env() -> None:
    # Paths that resolvers fill from the environment: the same values everywhere, so the hash is comparable.
    for var, value in {"LOTTERY_DATA": "/data", "LOTTERY_RUNS": "/runs", "LOTTERY_TEXT": "/text"}.items():
        os.environ[var] = value


def current_hashes() -> dict[str, str]:
    _fixed_env()
    cases = {exp: [f"+exp={exp}"] for exp in EXPERIMENTS} | OVERRIDES
    # What a run hashes: `auto` resolved as on a CPU machine outside SLURM (the job resolves it before hashing).
    return {name: config_hash(resolve_auto(make_config(overrides), cuda=lambda: False, slurm=lambda: False).cfg)
            for name, overrides in cases.items()}


def test_no_run_hash_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOTTERY_DATA", "LOTTERY_RUNS", "LOTTERY_TEXT"):
        monkeypatch.setenv(var, "")  # restored after the test: _fixed_env's values must not reach later tests
    pinned = json.loads(FIXTURE.read_text())
    now = current_hashes()
    missing = sorted(set(pinned) - set(now))
    assert not missing, f"experiments without a hash now: {missing}"
    changed = {k: (pinned[k], now[k]) for k in pinned if pinned[k] != now[k]}
    assert not changed, f"run hashes changed (pinned, now): {changed}"


if __name__ == "__main__":
    if "--write" in sys.argv:
        FIXTURE.write_text(json.dumps(current_hashes(), indent=2, sort_keys=True) + "\n")
        print(f"wrote {FIXTURE}")
    else:
        print(json.dumps(current_hashes(), indent=2, sort_keys=True))
