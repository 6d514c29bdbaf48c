"""Config by job: conf/job/<job>.yaml holds each job's groups; an experiment picks its job with one line, and a
group of another job on the command line is refused with one line that names the job and its groups."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import CONF_DIR, REPO, make_config

from lottery.config import ROOT_KEYS, SHARED_GROUPS
from lottery.errors import ConfigError
from lottery.run import JOBS, job_of, precheck

EXP_DIR = Path(CONF_DIR) / "exp"


def _defaults(path: Path) -> list:
    return yaml.safe_load(path.read_text()).get("defaults", [])


def test_each_job_has_its_file_and_the_file_sets_the_job() -> None:
    assert sorted(p.stem for p in (Path(CONF_DIR) / "job").glob("*.yaml")) == sorted(JOBS)
    for name, job in JOBS.items():
        cfg = make_config([f"job={name}"])
        assert cfg.job == name
        # The composed top level is the shared keys, the job's groups, and null keys only.
        extra = {k for k in cfg if k not in ROOT_KEYS and k not in job.groups}
        assert all(cfg[k] is None for k in extra), (name, extra)
        assert all(g in cfg for g in job.groups if g != "branch"), name  # +branch=NAME is optional


def test_no_experiment_nulls_out_a_group() -> None:
    for path in sorted(EXP_DIR.glob("*.yaml")):
        text = path.read_text()
        assert not re.search(r"override /\w+: null", text), path.name
        assert not re.search(r"^job:", text, flags=re.M), f"{path.name}: the job's file sets `job`"
        jobs = [e for e in _defaults(path) if isinstance(e, dict) and "override /job" in e]
        expected = "imp" if path.stem.startswith("imp_") else None
        cfg = make_config([f"+exp={path.stem}"])
        if expected == "imp":  # the root's default job
            assert not jobs and cfg.job == "imp", path.name
        elif path.stem != "oneshot_smollm2":  # it extends oneshot_llm, which picks the job
            assert len(jobs) == 1 and cfg.job == jobs[0]["override /job"], path.name


def test_no_exp_runs_the_readme_default() -> None:
    """`python -m lottery.run` alone: the IMP job with its defaults, LeNet-300-100 on MNIST, named custom."""
    cfg = make_config([])
    assert (cfg.job, cfg.name, cfg.model.name, cfg.data.name, cfg.pruning.strategy) == (
        "imp", "custom", "lenet_300_100", "mnist", "layerwise")
    assert job_of(cfg) is JOBS["imp"]


@pytest.mark.parametrize("exp,override,job", [
    ("oneshot_llm", "pruning=global", "oneshot"),
    ("oneshot_charlm", "trainer=gpu", "oneshot"),
    ("oneshot_minilm", "data=fashion_mnist", "oneshot"),
    ("oneshot_llm", "imp.levels=3", "oneshot"),
    ("oneshot_finetune", "model=hf", "finetune"),
    ("oneshot_finetune", "training=lenet_adam", "finetune"),
    ("imp_lenet", "prune=default", "imp"),
    ("imp_lenet", "calibration=wikitext2", "imp"),
])
def test_another_jobs_group_is_one_line_naming_the_job(exp: str, override: str, job: str) -> None:
    problem = precheck([f"+exp={exp}", override])
    group = re.split(r"[.=]", override)[0]
    assert problem == (f"{override}: {group} is not a config group of the {job} job (its groups: "
                       f"{', '.join(JOBS[job].groups)}; shared: {', '.join(SHARED_GROUPS)})")


@pytest.mark.parametrize("exp,override,group", [
    ("oneshot_charlm", "+trainer=gpu", "trainer"),  # Hydra's hint for `trainer=gpu`: refused all the same
    ("oneshot_llm", "+branch=random_reinit", "branch"),
    ("imp_lenet", "+prune=default", "prune"),
    ("imp_lenet", "+eval=perplexity", "eval"),
])
def test_an_appended_group_of_another_job_is_refused(exp: str, override: str, group: str) -> None:
    cfg = make_config([f"+exp={exp}", override])
    assert cfg[group] is not None  # composed: only the job's check stands between it and the run hash
    with pytest.raises(ConfigError, match=rf"^{group} is not a config group of the {cfg.job} job .*drop the {group}"):
        job_of(cfg)  # what main() calls first, also for a multirun (which skips precheck)


def test_the_jobs_own_groups_and_root_keys_pass() -> None:
    for overrides in (["+exp=imp_lenet", "+branch=random_reinit", "seeds=[0,1]", "logger=none"],
                      ["+exp=oneshot_charlm", "calibration=janeausten", "eval=embedding_cosine", "model=hf"],
                      ["+exp=oneshot_finetune", "finetune.mode=lora", "seed=4"]):
        cfg = make_config(overrides)
        assert job_of(cfg) is JOBS[cfg.job]


def test_unknown_job_is_one_line_listing_the_jobs() -> None:
    problem = precheck(["job=nosuch"])
    assert problem is not None and "job/nosuch" in problem and "Config search path" not in problem
    assert all(name in problem for name in JOBS)


def test_cli_refuses_another_jobs_group_with_exit_2(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "lottery.run", "+exp=oneshot_charlm", "pruning=global"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-1500:]
    assert lines[0].startswith("error: pruning=global: pruning is not a config group of the oneshot job")
    assert not (tmp_path / "runs").exists()
