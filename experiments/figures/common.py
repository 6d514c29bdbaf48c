"""What a figure is: the runs it needs (as config overrides), how to find or make them, and how it is drawn.

A run is addressed by its config, so a figure finds its runs by composing each override list with Hydra and
hashing the result, exactly as `python -m lottery.run` would. Missing runs are trained in this process
(`lottery.imp.job.run` / `lottery.llm.job.run`), or, with `--no-run`, named and left alone.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from lottery.errors import LotteryError
from lottery.imp.auto import resolve_auto
from lottery.imp.branches import branch_levels as imp_branch_levels
from lottery.imp.instability_schema import instability_folders
from lottery.imp.plan import level_rounds
from lottery.imp.schema import IMPRunConfig, resolve_steps
from lottery.run import register_configs, validate
from lottery.tracking import RunStore, load_json

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
DEFAULT_SEEDS = 5

register_configs()


@dataclass(frozen=True)
class RunSpec:
    """One run a figure needs. `key` names it inside the figure, e.g. ("imp_lenet", 3) for seed 3."""

    key: tuple[Any, ...]
    overrides: tuple[str, ...]

    def command(self, extra: Sequence[str] = ()) -> str:
        return "python -m lottery.run " + " ".join(shlex.quote(o) for o in (*self.overrides, *extra))


@dataclass
class Options:
    """Command-line choices shared by every figure."""

    seeds: int = DEFAULT_SEEDS
    overrides: list[str] = field(default_factory=list)  # --set: appended to every run's overrides (they win)
    out: Path = Path("figures")
    run_missing: bool = True
    only: tuple[str, ...] = ()  # --only: train just these series (a run key's first part), draw nothing


def series_of(spec: RunSpec) -> str:
    """The series a run belongs to inside its figure: the first part of its key (a method, a seed, ...)."""
    return str(spec.key[0])


def select_series(specs: Sequence[RunSpec], only: Sequence[str]) -> list[RunSpec]:
    """The specs of the series named in `only` (all of them when it is empty); an unknown name is an error, so a
    typo cannot silently train nothing."""
    if not only:
        return list(specs)
    known = list(dict.fromkeys(series_of(s) for s in specs))
    unknown = [name for name in only if name not in known]
    if unknown:
        raise LotteryError(f"--only {','.join(unknown)}: no such series; this figure has {', '.join(known)}")
    return [s for s in specs if series_of(s) in only]


class MissingRuns(Exception):
    """Raised with --no-run when some runs a figure needs are not (completely) in the store."""

    def __init__(self, missing: list[tuple[RunSpec, Path]], extra: Sequence[str]):
        self.missing, self.extra = missing, list(extra)
        lines = [f"  {path}\n    {spec.command(extra)}" for spec, path in missing]
        super().__init__(f"{len(missing)} run(s) missing:\n" + "\n".join(lines))


def compose_run(overrides: Sequence[str]) -> DictConfig:
    """The config `python -m lottery.run <overrides>` would run, `auto` accelerator and engine resolved for this
    machine (as the job does before hashing), so the run folder found here is the one a run writes."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return resolve_auto(cfg).cfg if cfg.get("job") == "imp" else cfg


def run_folder(cfg: DictConfig) -> Path:
    """The run store folder of `cfg` (without creating or locking it)."""
    prefix = "oneshot" if cfg.job == "oneshot" else "imp"
    return RunStore(cfg.store.root, cfg, prefix=prefix).path


def imp_levels(cfg: DictConfig) -> list[int]:
    """The main levels an IMP run stores: 0..levels, 0 and 1 for one-shot, only 1 for one-shot at init."""
    config = IMPRunConfig.from_config(cfg)
    return level_rounds(config.imp, config.pruning)


def branch_dirname(cfg: DictConfig) -> str | None:
    return f"branch_{cfg.branch.name}_s{cfg.branch.seed}" if cfg.get("branch") is not None else None


def branch_levels(cfg: DictConfig) -> list[int]:
    if cfg.get("branch") is None:
        return []
    return imp_branch_levels(cfg.branch.levels, cfg.imp.levels, cfg.imp.oneshot)


def is_complete(cfg: DictConfig, path: Path) -> bool:
    """Has the run finished everything the figure reads (every level, every branch level, or results.json)?"""
    if cfg.job == "oneshot":
        return (path / "results.json").exists()
    done = all((path / f"level_{lv:02d}" / "metrics.json").exists() for lv in imp_levels(cfg))
    if cfg.get("branch") is not None and cfg.branch.name == "instability":
        folders = run_instability_folders(cfg)
        return done and all((path / folder / "instability.json").exists() for folder in folders)
    name = branch_dirname(cfg)
    return done and all((path / f"level_{lv:02d}" / name / "metrics.json").exists() for lv in branch_levels(cfg))


def run_instability_folders(cfg: DictConfig) -> list[str]:
    """The branch folders of every (level, k) of an IMP run with `+branch=instability`, relative to its folder."""
    config = IMPRunConfig.from_config(cfg)
    imp = config.imp
    return instability_folders(config.branch, imp.levels, imp.oneshot, config.seed,
                               resolve_steps(config).steps_per_epoch)


def execute(cfg: DictConfig) -> None:
    """Train a missing run in this process (the same code path as `python -m lottery.run`)."""
    validate(cfg)
    if cfg.job == "oneshot":
        from lottery.llm.job import run
    else:
        from lottery.imp.job import run
    run(cfg)


@dataclass
class Run:
    """A run a figure reads: its spec, config and folder."""

    spec: RunSpec
    cfg: DictConfig
    path: Path

    def level(self, level: int) -> dict[str, Any]:
        return load_json(self.path / f"level_{level:02d}" / "metrics.json")

    def levels(self) -> list[dict[str, Any]]:
        return [self.level(lv) for lv in imp_levels(self.cfg)]

    def branch(self) -> dict[int, dict[str, Any]]:
        name = branch_dirname(self.cfg)
        return {lv: load_json(self.path / f"level_{lv:02d}" / name / "metrics.json") for lv in branch_levels(self.cfg)}

    def results(self) -> dict[str, Any]:
        return load_json(self.path / "results.json")


def gather(specs: Sequence[RunSpec], options: Options) -> dict[tuple[Any, ...], Run]:
    """Find every run `specs` need; train the missing ones, or raise MissingRuns when not allowed to."""
    runs, missing = {}, []
    for spec in specs:
        cfg = compose_run([*spec.overrides, *options.overrides])
        path = run_folder(cfg)
        runs[spec.key] = Run(spec, cfg, path)
        if not is_complete(cfg, path):
            missing.append((spec, path))
    if missing and not options.run_missing:
        raise MissingRuns(missing, options.overrides)
    for cfg in lockstep([runs[spec.key].cfg for spec, _ in missing]):
        execute(cfg)
    return runs


def lockstep(configs: Sequence[DictConfig]) -> list[DictConfig]:
    """The jobs that train `configs`: IMP runs with training.engine=batched that differ only in their seed
    become one job with seeds=[...] (trained together); every other run is its own job."""
    jobs: dict[str, DictConfig] = {}
    for cfg in configs:
        if cfg.job != "imp" or cfg.training.engine != "batched":
            jobs[f"single-{len(jobs)}"] = cfg
            continue
        cfg = cfg.copy()
        if cfg.get("branch") is not None and cfg.branch.seed == cfg.seed + 1000:
            with open_dict(cfg):
                cfg.branch.seed = None  # the default, seed + 1000, is what each seed of a lockstep job gets
        key = json.dumps({**OmegaConf.to_container(cfg, resolve=True), "seed": None, "seeds": None}, sort_keys=True)
        if key not in jobs:
            jobs[key] = cfg
            with open_dict(cfg):
                cfg.seeds = []
        with open_dict(jobs[key]):
            jobs[key].seeds = [*jobs[key].seeds, int(cfg.seed)]
    return list(jobs.values())


@dataclass(frozen=True)
class Figure:
    """A paper figure or table: the runs it needs and how it turns them into files."""

    name: str
    description: str
    runs: Callable[[Options], list[RunSpec]]
    draw: Callable[[dict[tuple[Any, ...], Run], Options, Path], list[Path]]

    def render(self, options: Options) -> list[Path]:
        runs = gather(select_series(self.runs(options), options.only), options)
        if options.only:  # a part of the figure's training (e.g. one machine's share); the figure needs them all
            return []
        out = options.out / self.name
        out.mkdir(parents=True, exist_ok=True)
        return self.draw(runs, options, out)
