"""experiments.regenerate: figures render from small real runs; the CSV holds the run store's numbers,
byte-identically on a rerun; --no-run names missing runs; llm_table reads the one-shot results.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import TINY

from experiments.figures import FIGURES, Options
from experiments.figures.common import compose_run, run_folder
from experiments.figures.llm_table import METHODS, NM_PATTERNS, SPARSITIES
from experiments.figures.llm_table import specs as llm_specs
from experiments.regenerate import main

TINY_SET = [a for o in TINY[1:] for a in ("--set", o)] + ["--set", "logger=none"]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _metrics(run: Path, level: int, branch: str = "") -> dict:
    return json.loads((run / f"level_{level:02d}" / branch / "metrics.json").read_text())


def _run_path(*overrides: str, extra: tuple[str, ...] = ()) -> Path:
    """The folder of the run a figure composes: its own overrides, then the --set ones in order."""
    return run_folder(compose_run([*overrides, *TINY[1:], "logger=none", *extra]))


def test_list_names_every_figure(capsys) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("lth_lenet", "lth_conv", "rewind", "llm_table"))


def test_lth_lenet_from_real_runs(tmp_path: Path, mnist_root: Path, capsys) -> None:
    extra = ("imp.levels=1", "data.train_subset=600", "data.eval_subset=200", "training.iterations=20",
             "training.eval_every=10")  # 2 seeds x (2 levels + 1 reinit branch): 6 very short trainings
    args = ["lth_lenet", "--seeds", "2", *TINY_SET, *[a for o in extra for a in ("--set", o)]]
    assert main(args) == 0
    out = tmp_path / "figures" / "lth_lenet"
    for ext in ("png", "pdf", "csv"):
        assert (out / f"lth_lenet.{ext}").stat().st_size > 0
    rows = _csv(out / "lth_lenet.csv")
    runs = [_run_path("+exp=imp_lenet", f"seed={s}", "+branch=random_reinit", f"branch.seed={1000 + s}", extra=extra)
            for s in range(2)]
    branch = "branch_random_reinit_s{}"
    for row in rows:
        level = int(row["level"])
        if row["series"] == "ticket":
            per_seed = [_metrics(r, level) for r in runs]
        else:
            per_seed = [_metrics(r, level, branch.format(1000 + s)) for s, r in enumerate(runs)]
        if row["panel"] == "test_acc_vs_iteration":
            values = [next(h["test_acc"] for h in m["history"] if h["iteration"] == int(row["iteration"]))
                      for m in per_seed]
        else:
            values = [m[row["panel"]] for m in per_seed]
        assert float(row["percent_remaining"]) == per_seed[0]["percent_remaining"]
        assert float(row["min"]) == min(values) and float(row["max"]) == max(values)
        assert float(row["mean"]) == pytest.approx(sum(values) / 2, abs=1e-12) and row["n"] == "2"
    panels = {(r["panel"], r["series"]) for r in rows}
    assert panels == {("test_acc_vs_iteration", "ticket"), ("early_stop_iteration", "ticket"),
                      ("early_stop_iteration", "reinit"), ("early_stop_test_acc", "ticket"),
                      ("early_stop_test_acc", "reinit")}
    # Same inputs, same CSV: read-only regeneration reproduces it byte for byte.
    before = (out / "lth_lenet.csv").read_bytes()
    assert main([*args, "--no-run"]) == 0
    assert (out / "lth_lenet.csv").read_bytes() == before


def test_batched_engine_trains_the_figure_seeds_in_one_lockstep_job(tmp_path: Path, mnist_root: Path) -> None:
    extra = ("imp.levels=1", "data.train_subset=600", "data.eval_subset=200", "training.iterations=20",
             "training.eval_every=10", "training.engine=batched")
    args = ["lth_lenet", "--seeds", "2", *TINY_SET, *[a for o in extra for a in ("--set", o)]]
    assert main(args) == 0
    assert (tmp_path / "figures" / "lth_lenet" / "lth_lenet.csv").stat().st_size > 0
    for s in range(2):
        run = _run_path("+exp=imp_lenet", f"seed={s}", "+branch=random_reinit", f"branch.seed={1000 + s}", extra=extra)
        # Level 1 trained both seeds' tickets and random re-inits together: one job, not two.
        assert _metrics(run, 1)["replicates"] == 4
        assert _metrics(run, 1, f"branch_random_reinit_s{1000 + s}")["replicates"] == 4
    assert main([*args, "--no-run"]) == 0


def test_no_run_names_the_missing_runs(tmp_path: Path, capsys) -> None:
    args = ["rewind", "--seeds", "1", "--no-run", *TINY_SET, "--set", "imp.levels=1", "--set", "imp.rewind_to=20"]
    assert main(args) == 1
    err = capsys.readouterr().err
    expected = [_run_path("+exp=imp_lenet", "seed=0", *variant, extra=("imp.levels=1", "imp.rewind_to=20"))
                for variant in (["imp.rewind=init"], ["imp.rewind=iteration", "imp.rewind_to=500"], ["imp.rewind=lr"])]
    assert "3 run(s) missing" in err
    for path in expected:
        assert str(path) in err
    assert "python -m lottery.run +exp=imp_lenet seed=0 imp.rewind=lr" in err
    assert not (tmp_path / "figures" / "rewind").exists() and not expected[0].exists()


def _fake_oneshot_results(options: Options) -> dict[Path, dict]:
    """results.json files in lottery/llm/job.py's format where the llm_table runs would write them."""
    written = {}
    for i, spec in enumerate(llm_specs(options)):
        cfg = compose_run([*spec.overrides, *options.overrides])
        patterns = ["unstructured"] if spec.key[1] == "unstructured" else NM_PATTERNS
        results = [{"method": m, "pattern": p, "sparsity_target": spec.key[2] if p == "unstructured" else 0.5,
                    "total_sparsity": 0.5, "nm_valid": None, "perplexity": 10.0 + i + 0.125 * j + 0.01 * k,
                    "prune_seconds": 2.0, "eval_seconds": 3.0, "peak_gpu_bytes": 1.5 * 2**30}
                   for j, p in enumerate(patterns) for k, m in enumerate(METHODS)]
        data = {"dense": {"perplexity": 9.5}, "metric": "perplexity", "results": results}
        path = run_folder(cfg)
        path.mkdir(parents=True)
        (path / "results.json").write_text(json.dumps(data))
        written[path] = data
    return written


def test_llm_table_reads_oneshot_results(tmp_path: Path) -> None:
    written = _fake_oneshot_results(Options())
    assert main(["llm_table", "--no-run"]) == 0
    out = tmp_path / "figures" / "llm_table"
    assert (out / "llm_table.png").exists() and (out / "llm_table.pdf").exists()
    rows = _csv(out / "llm_table.csv")
    expected = {(r["method"], r["pattern"], r["sparsity_target"]): r["perplexity"]
                for data in written.values() for r in data["results"]}
    assert len(rows) == 1 + len(expected)
    assert rows[0]["method"] == "dense" and float(rows[0]["value"]) == 9.5
    for row in rows[1:]:
        assert float(row["value"]) == expected[(row["method"], row["pattern"], float(row["sparsity_target"]))]
    # Wanda's Table 3 layout: unstructured sparsities ascending, then the N:M patterns; methods in order.
    assert [(r["pattern"], r["method"]) for r in rows[1:4]] == [("unstructured", m) for m in METHODS]
    assert [r["pattern"] for r in rows[-3:]] == [NM_PATTERNS[-1]] * 3
    table, speed = (out / "llm_table.md").read_text().split("wall time per variant")
    assert table.count("\n| ") == 1 + len(expected) + 1 and f"| SparseGPT | ✓ | {100 * SPARSITIES[0]:g}% |" in table
    assert speed.count("\n| ") == 1 + len(expected) and "| 2.0 | 3.0 | 1.50 |" in speed


@pytest.mark.slow
def test_llm_table_from_a_real_charlm_run(tmp_path: Path) -> None:
    text = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
    if not text.exists():
        pytest.skip("tinyshakespeare.txt not available")
    small = ["model.steps=20", "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2",
             "model.num_heads=2", "calibration.nsamples=4", "calibration.seqlen=32", "eval.seqlen=32",
             "eval.max_chunks=3", "progress_bar=false", "logger=none", f"model.text={text}", "exp=oneshot_charlm",
             "model.device=cpu"]
    assert main(["llm_table", *[a for o in small for a in ("--set", o)]]) == 0
    rows = _csv(tmp_path / "figures" / "llm_table" / "llm_table.csv")
    options = Options(overrides=small)
    for spec in llm_specs(options):
        results = json.loads((run_folder(compose_run([*spec.overrides, *small])) / "results.json").read_text())
        for r in results["results"]:
            match = [row for row in rows if row["method"] == r["method"] and row["pattern"] == r["pattern"]
                     and float(row["sparsity_target"]) == r["sparsity_target"]]
            assert len(match) == 1 and float(match[0]["value"]) == r["perplexity"]


@pytest.mark.slow
def test_rewind_from_real_runs(tmp_path: Path, mnist_root: Path) -> None:
    extra = ("imp.levels=1", "imp.rewind_to=20")
    assert main(["rewind", "--seeds", "1", *TINY_SET, *[a for o in extra for a in ("--set", o)]]) == 0
    rows = _csv(tmp_path / "figures" / "rewind" / "rewind.csv")
    variants = {"init": ["imp.rewind=init"], "iteration": ["imp.rewind=iteration", "imp.rewind_to=500"],
                "lr": ["imp.rewind=lr"]}
    for row in rows:
        run = _run_path("+exp=imp_lenet", "seed=0", *variants[row["series"]], extra=extra)
        assert float(row["mean"]) == _metrics(run, int(row["level"]))[row["panel"]]
    assert {r["series"] for r in rows} == set(variants) and set(FIGURES) >= {"rewind"}


def test_figure_means_do_not_depend_on_the_summation_order_of_the_python_version() -> None:
    from lottery.plots.aggregate import mean_min_max

    # The built-in sum gives 0.9999999999999999 here before Python 3.12 and 1.0 after; fsum is exact on both.
    stat = mean_min_max([0.1] * 10)
    assert stat.mean == 0.1 and (stat.min, stat.max, stat.n) == (0.1, 0.1, 10)


def test_committed_h200_lth_lenet_renders_again_from_its_stored_results(tmp_path: Path, monkeypatch) -> None:
    import tarfile

    from helpers import REPO

    stored = REPO / "experiments" / "figures" / "rendered" / "lth_lenet_h200"
    with tarfile.open(stored / "run_metrics.tar.gz") as tar:
        tar.extractall(tmp_path / "store", filter="data")
    monkeypatch.setenv("LOTTERY_RUNS", str(tmp_path / "store"))
    args = ["lth_lenet", "--no-run", "--out", str(tmp_path / "figures")]
    for override in ("training.engine=batched", "trainer=gpu", "logger=none", "progress_bar=false"):
        args += ["--set", override]
    assert main(args) == 0
    rendered = tmp_path / "figures" / "lth_lenet" / "lth_lenet.csv"
    assert rendered.read_bytes() == (stored / "lth_lenet.csv").read_bytes()
    rows = _csv(rendered)
    assert {r["n"] for r in rows} == {"5"} and len({r["level"] for r in rows}) == 20


def test_pai_runs_are_addressed_like_the_other_figures() -> None:
    from experiments.figures.lth import specs as lth_specs
    from experiments.figures.pai import LEVELS, METHODS, specs
    from lottery.imp.plan import level_rounds
    from lottery.imp.schema import IMPRunConfig

    options = Options(seeds=2)
    pai = {s.key: s for s in specs(options)}
    assert len(pai) == 2 * (1 + (len(METHODS) - 1) * len(LEVELS))
    # The IMP ticket of seed 1 is the lth_lenet run of seed 1 (a branch is not part of a run's folder).
    lth = {s.key: s for s in lth_specs(["imp_lenet"], options)}
    assert run_folder(compose_run(pai[("imp", None, 1)].overrides)) == run_folder(compose_run(lth[("imp_lenet", 1)].overrides))
    for method in ("snip", "magnitude", "random"):
        cfg = compose_run(pai[(method, 12, 0)].overrides)
        config = IMPRunConfig.from_config(cfg)
        assert level_rounds(config.imp, config.pruning) == [1] and cfg.imp.levels == 12 and cfg.pruning.strategy == "global"


@pytest.mark.slow
def test_committed_h200_pai_renders_again_from_its_stored_results(tmp_path: Path, monkeypatch) -> None:
    import tarfile

    from helpers import REPO

    stored = REPO / "experiments" / "figures" / "rendered" / "pai_h200"
    with tarfile.open(stored / "run_metrics.tar.gz") as tar:
        tar.extractall(tmp_path / "store", filter="data")
    monkeypatch.setenv("LOTTERY_RUNS", str(tmp_path / "store"))
    args = ["pai", "--no-run", "--out", str(tmp_path / "figures")]
    for override in ("training.engine=batched", "trainer=gpu", "logger=none", "progress_bar=false",
                     "training.iterations=8000"):
        args += ["--set", override]
    assert main(args) == 0
    rendered = tmp_path / "figures" / "pai" / "pai.csv"
    assert rendered.read_bytes() == (stored / "pai.csv").read_bytes()
    assert {r["n"] for r in _csv(rendered)} == {"5"}
