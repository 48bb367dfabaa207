"""Sampling: integrators over velocity callables, and the streaming chunk loop."""

from lightning_mf.sampling.samplers import guided, integrate, nfe

__all__ = ["guided", "integrate", "nfe"]
