"""Weights & Biases mirror of an IMP run: one W&B run per level, all in one group per experiment.

Offline by default (no account, no network): runs land in <run folder>/wandb/offline-run-*/ and upload
later with `wandb sync`. The run store stays the source of truth; nothing here decides anything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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
                 project: str = "lottery", entity: str | None = None, tags: list[str] | None = None):
        self.run_dir, self.group, self.config = Path(run_dir), group, config
        self.mode, self.project, self.entity, self.tags = mode, project, entity, list(tags or [])

    def _init_kwargs(self, name: str, job_type: str) -> dict[str, Any]:
        import wandb

        return dict(project=self.project, entity=self.entity, group=self.group, name=name, job_type=job_type,
                    config=self.config, tags=self.tags, dir=str(self.run_dir), mode=self.mode,
                    settings=wandb.Settings(console="off", silent=True, init_timeout=90))

    @staticmethod
    def _suffix(level: int, tag: str) -> str:
        return f"level{level:02d}" + (f"-{tag}" if tag else "")

    def level_logger(self, level: int, tag: str = "") -> Any:
        """A fresh W&B run for level `level` (or its branch `tag`), wrapped as a Lightning logger."""
        from lightning.pytorch.loggers import WandbLogger

        kwargs = self._init_kwargs(f"{self.group}-{self._suffix(level, tag)}", "imp-branch" if tag else "imp-level")
        logger = WandbLogger(**{k: v for k, v in kwargs.items() if k not in ("dir", "mode")},
                             save_dir=str(self.run_dir), offline=self.mode == "offline",
                             **({"mode": self.mode} if self.mode == "disabled" else {}))
        run = logger.experiment
        run.define_metric("iteration")
        run.define_metric("*", step_metric="iteration")
        return logger

    def end_level(self, level: int, logger: Any, metrics: dict[str, Any], files: dict[str, Path],
                  tag: str = "") -> None:
        """Log the level's summary and its mask/ticket artifacts, then close its run."""
        import wandb

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
            artifact = wandb.Artifact(f"{self.group}-{kind}-{self._suffix(level, tag)}", type=kind,
                                      metadata={"level": level, "percent_remaining": metrics["percent_remaining"]})
            artifact.add_file(str(path))
            run.log_artifact(artifact)
        run.finish()

    def end_experiment(self, rows: list[dict[str, Any]]) -> None:
        import wandb

        run = wandb.init(**self._init_kwargs(f"{self.group}-summary", "imp-summary"))
        columns = list(rows[0].keys()) if rows else []
        table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
        run.log({"summary_table": table})
        run.finish()


def make_tracker(name: str, run_dir: Path, group: str, config: dict[str, Any], **kwargs: Any) -> Any:
    """The tracker for `logger.name`: "wandb" or "none"."""
    return WandbTracker(run_dir, group, config, **kwargs) if name == "wandb" else NullTracker()
