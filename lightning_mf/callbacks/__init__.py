"""Lightning callbacks that own evaluation, visualisation and checkpoints during training."""

from lightning_mf.callbacks.generation_eval import GenerationEval
from lightning_mf.callbacks.model_checkpoint import ModelCheckpoint
from lightning_mf.callbacks.timed_checkpoint import TimedCheckpoint

__all__ = ["GenerationEval", "ModelCheckpoint", "TimedCheckpoint"]
