"""SLURM: Lightning's SLURM environment is picked up, and a pre-emption checkpoint is the resume point."""

from __future__ import annotations

import os
import time

import torch

from lottery.data import BatchStream, EvalBatches
from lottery.imp.level import LevelSpec, resume_checkpoint, train_level
from lottery.models import create_model, prunable_names
from lottery.pruning import Mask


def test_slurm_environment_is_detected(tmp_path, monkeypatch) -> None:
    import lightning as L

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "lottery", "SLURM_JOB_ID": "1234",
                       "SLURM_NODELIST": "node1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                       "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)

    class DM(L.LightningDataModule):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randn(120, 1, 28, 28, generator=g), torch.randint(0, 10, (120,), generator=g)
            self.start_step, self.iterations = 0, 4

        def train_dataloader(self):
            return BatchStream(self.x, self.y, 30, seed=0, end=self.iterations)

        def val_dataloader(self):
            return [EvalBatches(self.x, self.y, 60)]

        def to(self, device):
            return self

        def for_level(self, start_step, iterations, seed=None):  # the VisionDataModule method train_level uses
            self.start_step, self.iterations = start_step, iterations
            return self

    model = create_model("lenet_300_100", seed=0)
    spec = LevelSpec(start_step=0, iterations=4, optimizer="adam", lr=1e-3, momentum=0.0, weight_decay=0.0,
                     milestones=(), gamma=0.1, eval_every=2, checkpoint_every=2, progress_bar=False)
    module = train_level(model, Mask.ones(model, prunable_names(model)), DM(), spec, tmp_path / "last.ckpt")
    assert type(module.trainer._accelerator_connector.cluster_environment).__name__ == "SLURMEnvironment"
    assert [h["iteration"] for h in module.history] == [2, 4]


def test_newest_resume_point_wins(tmp_path) -> None:
    assert resume_checkpoint(tmp_path / "last.ckpt") is None
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"a")
    assert resume_checkpoint(last) == last
    time.sleep(0.01)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"b")
    os.utime(hpc, ns=(last.stat().st_mtime_ns + 10**9, last.stat().st_mtime_ns + 10**9))
    assert resume_checkpoint(last) == hpc
