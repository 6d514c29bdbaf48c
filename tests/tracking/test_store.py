"""Run store: the config hash, atomic writes, corrupt-file errors and the run lock."""

from __future__ import annotations

import pytest
import torch
from helpers import make_config

from lottery.errors import StoreError
from lottery.tracking import RunStore, config_hash, load_json, load_torch, save_json, save_torch


def test_hash_ignores_logging_paths_and_progress_bar() -> None:
    base = config_hash(make_config(["+exp=imp_lenet"]))
    for override in ["logger=none", "logger.mode=online", "logger.project=other", "progress_bar=false",
                     "data.root=/elsewhere", "store.root=/tmp/x", "training.checkpoint_every=7", "name=renamed"]:
        assert config_hash(make_config(["+exp=imp_lenet", override])) == base, override


def test_hash_changes_with_result_changing_fields() -> None:
    base = config_hash(make_config(["+exp=imp_lenet"]))
    hashes = {base}
    for override in ["training.lr=0.001", "seed=1", "pruning.rate=0.3", "imp.levels=3", "pruning=global",
                     "imp.rewind=iteration", "data.val_size=1000", "training.iterations=100"]:
        h = config_hash(make_config(["+exp=imp_lenet", override]))
        assert h not in hashes, override
        hashes.add(h)


def test_hash_is_stable_across_compositions() -> None:
    assert config_hash(make_config(["+exp=imp_lenet", "seed=3"])) == config_hash(make_config(["seed=3", "+exp=imp_lenet"]))


def test_atomic_save_leaves_old_file_on_failure(tmp_path) -> None:
    path = tmp_path / "store" / "x.pt"
    save_torch({"a": torch.ones(3)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("fail mid-write")

    with pytest.raises(RuntimeError):
        save_torch({"a": Boom()}, path)
    assert torch.equal(load_torch(path)["a"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"], "a temporary file was left behind"


def test_corrupt_files_give_a_store_error_naming_them(tmp_path) -> None:
    save_torch({"a": torch.ones(1000)}, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="m.pt"):
        load_torch(tmp_path / "m.pt")
    save_json({"a": 1}, tmp_path / "j.json")
    (tmp_path / "j.json").write_text('{"a": ')
    with pytest.raises(StoreError, match="j.json"):
        load_json(tmp_path / "j.json")


def test_second_process_on_the_same_run_is_refused(tmp_path) -> None:
    cfg = make_config(["+exp=imp_lenet", f"store.root={tmp_path}"])
    with RunStore(tmp_path, cfg, prefix="imp") as store:
        assert (store.path / "config.yaml").exists()
        with pytest.raises(StoreError, match="another process"):
            RunStore(tmp_path, cfg, prefix="imp").open()
    RunStore(tmp_path, cfg, prefix="imp").open().close()  # free again once released


def test_a_key_added_later_is_hash_neutral_at_its_old_value(monkeypatch) -> None:
    from lottery.tracking import store

    monkeypatch.setattr(store, "HASH_NEUTRAL_DEFAULTS", {"pruning.score": "magnitude"})
    before = {"seed": 0, "pruning": {"rate": 0.2}}
    assert store.config_hash(before) == store.config_hash({"seed": 0, "pruning": {"rate": 0.2, "score": "magnitude"}})
    assert store.config_hash(before) != store.config_hash({"seed": 0, "pruning": {"rate": 0.2, "score": "snip"}})
