"""Lightning callbacks that own evaluation and visualisation during training."""

from lightning_mf.callbacks.generation_eval import GenerationEval

__all__ = ["GenerationEval"]
