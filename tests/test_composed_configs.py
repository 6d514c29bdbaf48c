"""The composed config of every experiment (and of common command lines) is pinned: values, and key order in groups.

`fixtures/composed_configs.yaml` holds `OmegaConf.to_container(cfg, resolve=True)` of each case below, as
`python -m lottery.run <overrides>` composes it before anything runs. It was written before the config moved
into per-job groups (conf/job/), so a reshuffle of conf/ that changes what a command composes fails here,
not only where the change reaches a run hash. Regenerate (only for a change of composed configs on purpose):

    python tests/test_composed_configs.py --write
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import CONF_DIR  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "composed_configs.yaml"
EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "exp").glob("*.yaml"))
# Beyond the bare experiments: the command lines README and sweeps/ use, one group override of each kind.
CASES: dict[str, list[str]] = {
    "no exp": [],
    "no exp seed=3": ["seed=3"],
    "imp_lenet model=conv6 data=cifar10": ["+exp=imp_lenet", "model=conv6", "data=cifar10"],
    "imp_lenet data=fashion_mnist": ["+exp=imp_lenet", "data=fashion_mnist"],
    "imp_lenet trainer=gpu": ["+exp=imp_lenet", "trainer=gpu"],
    "imp_lenet trainer=ddp_cpu": ["+exp=imp_lenet", "trainer=ddp_cpu"],
    "imp_lenet training=cifar_sgd": ["+exp=imp_lenet", "training=cifar_sgd"],
    "imp_lenet pruning=global": ["+exp=imp_lenet", "pruning=global"],
    "imp_lenet logger=none": ["+exp=imp_lenet", "logger=none"],
    "imp_lenet seeds": ["+exp=imp_lenet", "seeds=[0,1,2]", "training.engine=batched"],
    "imp_lenet +branch=random_reinit": ["+exp=imp_lenet", "+branch=random_reinit", "branch.seed=1003"],
    "imp_lenet +branch=instability": ["+exp=imp_lenet", "imp.levels=15", "+branch=instability",
                                      "branch.levels=[0,7,15]"],
    "imp_lenet sweep values": ["+exp=imp_lenet", "training.lr=0.003", "imp.levels=10", "logger.mode=online"],
    "imp_resnet20 synthetic": ["+exp=imp_resnet20", "data=synthetic_cifar", "training.iterations=20",
                               "imp.rewind_to=5"],
    "oneshot_llm wanda 2:4": ["+exp=oneshot_llm", "prune.method=wanda", "prune.pattern=2:4"],
    "oneshot_llm calibration=wikitext2": ["+exp=oneshot_llm", "calibration=wikitext2"],
    "oneshot_llm eval=embedding_cosine": ["+exp=oneshot_llm", "eval=embedding_cosine"],
    "oneshot_llm logger=none": ["+exp=oneshot_llm", "logger=none", "seed=2"],
    "oneshot_smollm2 cuda": ["+exp=oneshot_smollm2", "model.device=cuda", "prune.method=[wanda,sparsegpt]"],
    "oneshot_charlm magnitude": ["+exp=oneshot_charlm", "prune.method=magnitude"],
    "oneshot_finetune source": ["+exp=oneshot_finetune", "finetune.source=oneshot_abc/wanda_2of4",
                                "finetune.mode=lora"],
}


def _fixed_env(monkeypatch: pytest.MonkeyPatch | None = None) -> None:
    # Paths that resolvers fill from the environment: the same values everywhere, so the configs compare.
    for var, value in {"LOTTERY_DATA": "/data", "LOTTERY_RUNS": "/runs", "LOTTERY_TEXT": "/text"}.items():
        if monkeypatch is None:
            os.environ[var] = value
        else:
            monkeypatch.setenv(var, value)


def composed() -> dict[str, Any]:
    """Each case's composed config as plain containers, interpolations resolved."""
    cases = {exp: [f"+exp={exp}"] for exp in EXPERIMENTS} | CASES
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):  # once: as helpers.make_config, faster
        return {name: OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
                for name, overrides in cases.items()}


def key_order(node: Any) -> Any:
    """The keys of every mapping in `node`, in order (what `config.yaml` of a run folder lists)."""
    if isinstance(node, dict):
        return [(key, key_order(value)) for key, value in node.items()]
    if isinstance(node, list):
        return [key_order(value) for value in node]
    return None


def test_composed_configs_do_not_change(monkeypatch: pytest.MonkeyPatch) -> None:
    _fixed_env(monkeypatch)
    pinned = yaml.safe_load(FIXTURE.read_text())
    now = composed()
    assert sorted(pinned) == sorted(now), "the pinned cases and the cases composed differ"
    changed = [name for name in pinned if pinned[name] != now[name]]
    assert not changed, f"composed configs changed: {changed}"
    # Inside each group the keys keep their order. The top level's order moved on purpose when the job's groups
    # went into conf/job/ (the job's groups and `job` first, then the shared keys); no hash reads it (config_hash
    # sorts the keys).
    reordered = [name for name in pinned
                 if {k: key_order(v) for k, v in pinned[name].items()} != {k: key_order(v) for k, v in now[name].items()}]
    assert not reordered, f"composed configs list the keys of a group in another order: {reordered}"


def test_the_fixture_pins_something_that_differs() -> None:
    """The comparison can fail: the pinned configs differ between experiments, and in their IMP groups."""
    pinned = yaml.safe_load(FIXTURE.read_text())
    assert pinned["imp_lenet"]["model"]["name"] == "lenet_300_100"
    assert pinned["imp_lenet model=conv6 data=cifar10"]["model"]["name"] == "conv6"
    # One-shot configs carry the IMP groups as null keys (they are hashed: see OneshotRootConfig).
    assert all(pinned["oneshot_llm"][group] is None for group in ("data", "training", "pruning", "imp", "trainer"))


if __name__ == "__main__":
    _fixed_env()
    text = yaml.safe_dump(composed(), sort_keys=False, default_flow_style=False, width=120)
    if "--write" in sys.argv:
        FIXTURE.write_text(text)
        print(f"wrote {FIXTURE}")
    else:
        print(text)
