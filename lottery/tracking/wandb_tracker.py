"""Weights & Biases mirror of an IMP run: one W&B run per level, all in one group per experiment.

Why a group of runs rather than one run: a level is a separate training (its own step axis from iteration
0 or k), is resumed or skipped on its own, and has its own inputs and outputs. So the experiment `imp_<hash>`
is a W&B group with one run per level (`…-level03`), one per control branch (`…-level03-random_reinit_s1`)
and a `…-summary` run holding the config, the summary table and the plots across levels.

Lineage: level N's run *uses* level N-1's mask and ticket artifacts (a branch uses its level's), so W&B's
artifact graph shows mask_0 -> level 1 -> mask_1 -> ... The used artifact is re-created from the run store
(same name, same file, hence the same digest), which also works after a resume.

Offline by default (no account, no network): runs land in <run folder>/wandb/offline-run-*/ and upload
later with `wandb sync`. The run store stays the source of truth; nothing here decides anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lottery.tracking.objective import objective_from_store, objective_settings

log = logging.getLogger(__name__)


class NullTracker:
    """Tracker for `logger=none`: every call is a no-op."""

    def level_logger(self, level: int, tag: str = "") -> Any:
        return False

    def end_level(self, level: int, logger: Any, metrics: dict[str, Any], files: dict[str, Path],
                  tag: str = "") -> None:
        pass

    def end_experiment(self, rows: list[dict[str, Any]]) -> None:
        pass


class WandbTracker:
    """Creates a Lightning `WandbLogger` per level and logs masks, tickets and the summary table."""

    def __init__(self, run_dir: Path, group: str, config: dict[str, Any], mode: str = "offline",
                 project: str = "lottery", entity: str | None = None, tags: list[str] | None = None,
                 init_timeout: float = 30.0):
        self.run_dir, self.group, self.config = Path(run_dir), group, config
        self.mode, self.project, self.entity, self.tags = mode, project, entity, list(tags or [])
        self.init_timeout = init_timeout
        self.failed = False

    def _init_kwargs(self, name: str, job_type: str) -> dict[str, Any]:
        import wandb

        return dict(project=self.project, entity=self.entity, group=self.group, name=name, job_type=job_type,
                    config=self.config, tags=self.tags, dir=str(self.run_dir), mode=self.mode,
                    settings=wandb.Settings(console="off", silent=True, init_timeout=self.init_timeout))

    @staticmethod
    def _suffix(level: int, tag: str) -> str:
        return f"level{level:02d}" + (f"-{tag}" if tag else "")

    def _guarded(self, open_run: Any) -> Any:
        """Open a W&B run; if that fails (no network, no account), warn and carry on offline, or without W&B.

        Trackers observe: a tracker problem must never stop or stall the training it observes.
        """
        if self.failed:
            return False
        try:
            return open_run()
        except Exception as err:  # wandb raises many kinds (CommError, UsageError, timeouts)
            if self.mode == "online":
                log.warning("W&B online logging failed (%s: %s); continuing offline — upload later with "
                            "`wandb sync %s/wandb/offline-run-*`", type(err).__name__, err, self.run_dir)
                self.mode = "offline"
                return self._guarded(open_run)
            log.warning("W&B logging failed (%s: %s); continuing without it", type(err).__name__, err)
            self.failed = True
            return False

    def level_logger(self, level: int, tag: str = "") -> Any:
        """A fresh W&B run for level `level` (or its branch `tag`), wrapped as a Lightning logger."""
        return self._guarded(lambda: self._open_level_logger(level, tag))

    def _open_level_logger(self, level: int, tag: str) -> Any:
        from lightning.pytorch.loggers import WandbLogger

        kwargs = self._init_kwargs(f"{self.group}-{self._suffix(level, tag)}", "imp-branch" if tag else "imp-level")
        # An explicit id of its own: never the sweep agent's WANDB_RUN_ID (that one is the summary run's).
        kwargs["id"] = secrets.token_hex(4)
        logger = WandbLogger(**{k: v for k, v in kwargs.items() if k not in ("dir", "mode")},
                             save_dir=str(self.run_dir), offline=self.mode == "offline",
                             **({"mode": self.mode} if self.mode == "disabled" else {}))
        with detached_from_sweep_agent():
            run = logger.experiment
        run.define_metric("iteration")
        run.define_metric("*", step_metric="iteration")
        if self.mode != "disabled":
            for artifact in self._inputs(level, tag):
                use_artifact(run, artifact)
        return logger

    def _artifact(self, kind: str, level: int, tag: str, path: Path, percent_remaining: float) -> Any:
        import wandb

        artifact = wandb.Artifact(f"{self.group}-{kind}-{self._suffix(level, tag)}", type=kind,
                                  metadata={"level": level, "percent_remaining": percent_remaining})
        artifact.add_file(str(path))
        return artifact

    def _inputs(self, level: int, tag: str) -> list[Any]:
        """The artifacts this level derives from: level N-1's mask and ticket, or for a branch its level's."""
        source = level if tag else level - 1
        folder = self.run_dir / f"level_{source:02d}"
        if source < 0 or not (folder / "metrics.json").exists():
            return []
        percent = json.loads((folder / "metrics.json").read_text())["percent_remaining"]
        return [self._artifact(kind, source, "", folder / file, percent)
                for kind, file in (("mask", "mask.pt"), ("ticket", "start.pt")) if (folder / file).exists()]

    def end_level(self, level: int, logger: Any, metrics: dict[str, Any], files: dict[str, Path],
                  tag: str = "") -> None:
        """Log the level's summary and its mask/ticket artifacts, then close its run."""
        import wandb

        if not logger:
            return
        run = logger.experiment
        run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None})
        analysis = metrics.get("analysis") or {}
        if analysis.get("overlap"):
            run.summary["mask_jaccard"] = analysis["overlap"]["overall"]
            run.summary.update({f"mask_jaccard/{k}": v for k, v in analysis["overlap"]["per_layer"].items()})
        if analysis.get("init_histogram"):
            overall = analysis["init_histogram"]["overall"]
            run.log({"iteration": metrics["iterations"],
                     "init_values/kept": wandb.Histogram(np_histogram=(overall["kept"], overall["edges"])),
                     "init_values/pruned": wandb.Histogram(np_histogram=(overall["pruned"], overall["edges"]))})
        for kind, path in files.items():
            run.log_artifact(self._artifact(kind, level, tag, path, metrics["percent_remaining"]))
        run.finish()

    def _metrics(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The store's metrics.json behind a summary row (the level's, or its branch's)."""
        folder = self.run_dir / f"level_{row['level']:02d}"
        path = folder / (f"branch_{row['branch']}" if row.get("branch") else "") / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else None

    def end_experiment(self, rows: list[dict[str, Any]]) -> None:
        """The summary run: config, summary table, accuracy curves and accuracy vs % remaining, objective."""
        import wandb

        # Under `wandb agent` this is the trial's run (its id is the agent's), so the sweep sees `objective`.
        run = self._guarded(lambda: wandb.init(id=os.environ.get("WANDB_RUN_ID"),
                                               **self._init_kwargs(f"{self.group}-summary", "imp-summary")))
        if not run:
            return
        columns = list(rows[0].keys()) if rows else []
        log: dict[str, Any] = {"summary_table": wandb.Table(columns=columns,
                                                            data=[[row[c] for c in columns] for row in rows])}
        curves = [(row, m) for row in rows if (m := self._metrics(row)) is not None]
        curve_table = wandb.Table(columns=["level", "branch", "percent_remaining", "iteration", "val_acc", "test_acc"],
                                  data=[[row["level"], row.get("branch") or "ticket", m["percent_remaining"],
                                         h["iteration"], h.get("val_acc"), h.get("test_acc")]
                                        for row, m in curves for h in m["history"]])
        log["curves"] = curve_table
        tickets = [(row, m) for row, m in curves if not row.get("branch") and m["history"]]
        if tickets:
            log["test_acc_vs_iteration"] = wandb.plot.line_series(
                xs=[[h["iteration"] for h in m["history"]] for _, m in tickets],
                ys=[[h["test_acc"] for h in m["history"]] for _, m in tickets],
                keys=[f"level {row['level']} ({m['percent_remaining']:.1f}%)" for row, m in tickets],
                title="Test accuracy vs iteration (winning tickets)", xname="iteration")
        series = list(dict.fromkeys(row.get("branch") or "ticket" for row in rows))
        if rows:
            by_series = [[r for r in rows if (r.get("branch") or "ticket") == s] for s in series]
            log["test_acc_vs_percent_remaining"] = wandb.plot.line_series(
                xs=[[r["percent_remaining"] for r in rs] for rs in by_series],
                ys=[[r["early_stop_test_acc"] for r in rs] for rs in by_series], keys=series,
                title="Test accuracy at early stop vs % of weights remaining", xname="% of weights remaining")
        run.log(log)
        target, metric = objective_settings()
        objective = objective_from_store(self.run_dir, target, metric)
        if objective is not None:  # what W&B sweeps (sweeps/*.yaml) and the Optuna sweeper optimise
            run.summary["objective"] = objective
        run.finish()


def use_artifact(run: Any, artifact: Any) -> None:
    """Record that `run` consumes `artifact` (a draft re-created with the logged one's name and content).

    `run.use_artifact` refuses offline runs (wandb 0.31); offline we write what it writes for a draft artifact
    online: the artifact, flagged use_after_commit. `wandb sync` then commits it (the same digest resolves to
    the existing version) and records the use, which draws the lineage edge.
    """
    if run.settings._offline:
        run._log_artifact(artifact, use_after_commit=True)
    else:
        run.use_artifact(artifact)


# Set by `wandb agent` for the process it starts; each names the sweep's one run of this trial.
_AGENT_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RESUME")


@contextlib.contextmanager
def detached_from_sweep_agent() -> Iterator[None]:
    """Start level runs as runs of their own: under `wandb agent`, only the summary run is the sweep's run
    (it carries the `objective`), so the level runs must not reuse (and overwrite) the agent's run id."""
    saved = {k: os.environ.pop(k) for k in _AGENT_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def make_tracker(name: str, run_dir: Path, group: str, config: dict[str, Any], **kwargs: Any) -> Any:
    """The tracker for `logger.name`: "wandb" or "none"."""
    return WandbTracker(run_dir, group, config, **kwargs) if name == "wandb" else NullTracker()
