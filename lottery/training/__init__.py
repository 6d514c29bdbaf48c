"""Training under a mask: the LightningModule and the callbacks an IMP level needs."""

from lottery.training.callbacks import AtomicCheckpointIO, ResumeCheckpoint, RewindCapture
from lottery.training.module import MaskedClassifier
from lottery.training.progress import LevelProgressBar

__all__ = ["AtomicCheckpointIO", "LevelProgressBar", "MaskedClassifier", "ResumeCheckpoint", "RewindCapture"]
