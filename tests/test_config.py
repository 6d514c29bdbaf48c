"""Every experiment composes and validates; config values reach the job."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CONF_DIR, make_config

from lottery.errors import ConfigError
from lottery.run import validate

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "exp").glob("*.yaml"))


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_composes(exp: str) -> None:
    cfg = make_config([f"+exp={exp}"])
    assert cfg.name == exp
    if cfg.job == "finetune":  # fine-tunes a stored variant: there is none to default to, and it says so
        with pytest.raises(ConfigError, match="finetune.source is not set"):
            validate(cfg)
        return
    # Without an optional data package the experiment must stop with the one line that says how to install it.
    if str(cfg.get("model", {}).get("name_or_path", "")).startswith("pkg:") and not _package_here(cfg):
        with pytest.raises(ConfigError, match="is not installed"):
            validate(cfg)
        return
    if cfg.get("calibration") is not None and cfg.calibration.get("corpus") == "janeausten" and not _corpus_here():
        with pytest.raises(ConfigError, match="r-cran-janeaustenr"):
            validate(cfg)
        return
    validate(cfg)


def _package_here(cfg) -> bool:
    import importlib.util

    return importlib.util.find_spec(cfg.model.name_or_path[len("pkg:"):].split("/")[0]) is not None


def _corpus_here() -> bool:
    import importlib.util

    from lottery.llm.corpora import find_janeaustenr

    return find_janeaustenr() is not None and importlib.util.find_spec("rdata") is not None


def test_imp_lenet_has_the_papers_defaults() -> None:
    cfg = make_config(["+exp=imp_lenet"])
    steps = validate(cfg)
    assert (cfg.model.name, cfg.model.init) == ("lenet_300_100", "glorot_normal")
    assert (cfg.training.optimizer, cfg.training.lr, cfg.training.batch_size) == ("adam", 1.2e-3, 60)
    assert steps.iterations == 50000 and cfg.data.val_size == 5000
    assert (cfg.pruning.strategy, cfg.pruning.rate, cfg.pruning.output_rate) == ("layerwise", 0.2, 0.1)
    assert cfg.imp.rewind == "init"
    # The default number of levels ends at about 1.5% of weights remaining.
    sizes = {"hidden": 784 * 300 + 300 * 100, "out": 100 * 10}
    remaining = (sizes["hidden"] * 0.8 ** cfg.imp.levels + sizes["out"] * 0.9 ** cfg.imp.levels) / sum(sizes.values())
    assert 0.013 < remaining < 0.017


def test_overrides_and_step_units() -> None:
    cfg = make_config(["+exp=imp_lenet", "imp.levels=5", "training.iterations=2000", "seed=3",
                       "imp.rewind=iteration", "imp.rewind_to=2ep"])
    steps = validate(cfg)
    assert (cfg.imp.levels, cfg.seed, steps.iterations) == (5, 3, 2000)
    assert steps.rewind == 2 * (55000 // 60)


def test_rewind_past_the_end_is_rejected() -> None:
    cfg = make_config(["+exp=imp_lenet", "training.iterations=100", "imp.rewind=iteration", "imp.rewind_to=1ep"])
    with pytest.raises(ConfigError, match="imp.rewind_to"):
        validate(cfg)
