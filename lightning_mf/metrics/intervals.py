"""95% intervals for evaluation figures: a number means something only with its uncertainty over clips."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mean_ci95"]


def mean_ci95(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of per-clip values (N,) and the half-width of its 95% interval (1.96 standard errors; 0 for one clip)."""
    values = values.double()
    if values.numel() < 2:
        return values.mean(), torch.zeros((), dtype=values.dtype, device=values.device)
    return values.mean(), 1.96 * values.std() / values.numel() ** 0.5
