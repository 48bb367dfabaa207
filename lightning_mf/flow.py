"""METHOD §1 written once: the rectified-flow notation shared by objectives, samplers and training.

Convention (as Wan / Self-Forcing; the *opposite* of facebookresearch/flow_matching's t): ``s`` in [0, 1] is the
noise level, ``s = 1`` pure noise, ``x_s = (1 - s) x0 + s eps``, velocity ``v = eps - x0``, ``x0 = x_s - s v``.
The average velocity over ``[s - d, s]`` is ``u = (x_s - x_{s-d}) / d``, a jump is ``x_{s-d} = x_s - d u``, and
``d = 0`` means the instantaneous velocity. Multi mode and Few mode are the same update on different grids: the
grid tells the network ``d = 0`` (Multi) or ``d =`` the jump (Few).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

import torch
from torch import Tensor

__all__ = ["AV", "Velocity", "grid", "interpolate", "sample_noise_levels", "shift", "velocity_target", "x0_from_velocity"]

AV: TypeAlias = dict[str, Tensor]  # modality -> tokens (B, N_m, C_m)
Velocity: TypeAlias = Callable[[AV, float, float], AV]  # (x, s, d) -> u; d = 0 is Multi mode


def interpolate(x0: Tensor, eps: Tensor, s: Tensor | float) -> Tensor:
    """``x_s = (1 - s) x0 + s eps`` (``s`` broadcasts)."""
    return (1 - s) * x0 + s * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The flow-matching target ``v = eps - x0``."""
    return eps - x0


def x0_from_velocity(x_s: Tensor, s: Tensor | float, v: Tensor) -> Tensor:
    return x_s - s * v


def shift(s: Tensor | float, k: float) -> Tensor | float:
    """Timestep shift ``k s / (1 + (k - 1) s)``: k > 1 spends more of a grid (or of training) at high noise."""
    if k <= 0:
        raise ValueError(f"shift must be positive, got {k}")
    return k * s / (1 + (k - 1) * s)


def sample_noise_levels(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    distribution: Literal["uniform", "logit_normal"] = "logit_normal",
    shift_k: float = 1.0,
    loc: float = 0.0,
    scale: float = 1.0,
    eps: float = 1e-3,
) -> Tensor:
    """Training noise levels in ``[eps, 1 - eps]``: uniform or logit-normal (SD3), then shifted by ``shift_k``."""
    if distribution == "uniform":
        s = torch.rand(shape, generator=generator, device=device)
    elif distribution == "logit_normal":
        s = torch.sigmoid(loc + scale * torch.randn(shape, generator=generator, device=device))
    else:
        raise ValueError(f"distribution must be 'uniform' or 'logit_normal', got {distribution!r}")
    return shift(s, shift_k).clamp(eps, 1 - eps)


def grid(steps: int, shift_k: float = 1.0, *, few: bool) -> list[tuple[float, float, float]]:
    """``(s, step, d)`` triples from s = 1 to s = 0 on the shifted grid; ``d = step`` in Few mode, 0 in Multi."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"grid needs steps >= 1, got {steps!r}")
    levels = shift(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift_k).tolist()
    levels[-1] = 0.0
    return [(a, a - b, (a - b) if few else 0.0) for a, b in zip(levels[:-1], levels[1:])]

