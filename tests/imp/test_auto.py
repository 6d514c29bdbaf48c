"""`trainer.accelerator: auto` and `training.engine: auto` (lottery.imp.auto): what they become on each kind of
machine, that the run hash records the result, and that the main command says what ran."""

from __future__ import annotations

import pytest
from helpers import make_config

from lottery.imp.auto import resolve_auto
from lottery.tracking.store import config_hash


def resolved(overrides: list[str], cuda: bool = False, slurm: bool = False):
    return resolve_auto(make_config(["+exp=imp_lenet", *overrides]), cuda=lambda: cuda, slurm=lambda: slurm)


@pytest.mark.parametrize("overrides,cuda,slurm,accelerator,engine", [
    ([], False, False, "cpu", "fabric"),
    ([], True, False, "gpu", "batched"),
    (["trainer=ddp_cpu"], False, False, "cpu", "trainer"),  # two processes: only the Trainer does DDP
    (["trainer=ddp"], True, False, "gpu", "trainer"),
    ([], True, True, "gpu", "trainer"),  # SLURM: the Trainer's requeue on pre-emption
    (["trainer=cpu"], True, False, "cpu", "fabric"),  # an explicit accelerator wins over the GPU
    (["training.engine=trainer"], True, False, "gpu", "trainer"),  # an explicit engine is kept
    (["training.engine=batched"], False, False, "cpu", "batched"),
])
def test_auto_resolves_per_machine(overrides, cuda, slurm, accelerator, engine) -> None:
    cfg, reasons = resolved(overrides, cuda, slurm)
    assert (cfg.trainer.accelerator, cfg.training.engine) == (accelerator, engine)
    # One line per key that was auto: the accelerator unless a trainer group pins it, the engine unless set.
    expected = ["trainer.accelerator=auto"] * (not any(o.startswith("trainer=") for o in overrides))
    expected += ["training.engine=auto"] * (not any(o.startswith("training.engine=") for o in overrides))
    assert [r.split(" -> ")[0] for r in reasons] == expected


def test_resolving_twice_changes_nothing_and_says_nothing() -> None:
    once = resolved([])
    twice = resolve_auto(once.cfg, cuda=lambda: True, slurm=lambda: True)  # nothing auto is left to resolve
    assert twice.cfg == once.cfg and twice.reasons == []
    assert [r.split(" -> ")[0] for r in once.reasons] == ["trainer.accelerator=auto", "training.engine=auto"]


def test_hash_records_device_kind_and_engine() -> None:
    cpu, gpu = resolved([]).cfg, resolved([], cuda=True).cfg
    assert config_hash(cpu) != config_hash(gpu)  # CPU and GPU runs never share a folder
    # The resolved default is exactly the explicit config that would run: same folder.
    assert config_hash(cpu) == config_hash(make_config(["+exp=imp_lenet", "trainer=cpu", "training.engine=fabric"]))
    assert config_hash(gpu) == config_hash(make_config(["+exp=imp_lenet", "trainer=gpu", "training.engine=batched"]))
    # Unresolved `auto` never reaches a hash by accident: it differs from every resolved one.
    assert config_hash(make_config(["+exp=imp_lenet"])) not in (config_hash(cpu), config_hash(gpu))
