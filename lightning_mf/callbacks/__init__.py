"""Lightning callbacks that own evaluation and visualisation during training."""

from lightning_mf.callbacks.generation_eval import GenerationEval
from lightning_mf.callbacks.timed_checkpoint import TimedCheckpoint

__all__ = ["GenerationEval", "TimedCheckpoint"]
