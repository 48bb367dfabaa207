"""METHOD §1 written once: the rectified-flow notation shared by objectives, samplers and training.

Conventions (as Wan / Self-Forcing; the *opposite* direction of facebookresearch/flow_matching's ``t``):

- ``s`` in [0, 1] is the noise level, ``s = 1`` pure noise: ``x_s = (1 - s) x0 + s eps``.
- Velocity ``v = eps - x0``, so ``x0 = x_s - s v``.
- Timestep shift ``shift(s, k) = k s / (1 + (k - 1) s)``; ``k > 1`` spends more steps (or training) at high noise.
- Average velocity over ``[s - d, s]``: ``u = (x_s - x_{s-d}) / d``; a jump is ``x_{s-d} = x_s - d u``; ``d = 0``
  means the instantaneous velocity ``v``.
- Multi mode tells the network ``d = 0`` (many Euler/Heun steps); Few mode tells it ``d =`` the jump. Both are the
  same update ``x <- x - step * u`` on a different grid (``grid(..., few=...)``).
- Tokens travel as modality dicts ``AV`` (e.g. ``{"video": (B, N, C), "audio": (B, M, C)}``); every function
  here and in ``sampling/`` works on any set of keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias, TypeVar

import torch
from torch import Tensor

__all__ = [
    "AV", "Velocity", "grid", "interpolate", "sample_noise_levels", "shift", "velocity_target", "x0_from_velocity",
]

AV: TypeAlias = dict[str, Tensor]  # modality -> tokens (B, N_m, C_m)
Velocity: TypeAlias = Callable[[AV, float, float], AV]  # (x, s, d) -> u; d = 0 is Multi mode

_S = TypeVar("_S", Tensor, float)


def interpolate(x0: Tensor, eps: Tensor, s: Tensor | float) -> Tensor:
    """``x_s = (1 - s) x0 + s eps`` (METHOD §1); ``s`` broadcasts, e.g. a per-token level of shape (B, N, 1)."""
    return (1 - s) * x0 + s * eps


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The flow-matching target ``v = eps - x0`` (METHOD §1)."""
    return eps - x0


def x0_from_velocity(x_s: Tensor, s: Tensor | float, v: Tensor) -> Tensor:
    """``x0 = x_s - s v``: the clean estimate behind a velocity prediction (METHOD §1; used by DMD and decoding)."""
    return x_s - s * v


def shift(s: _S, k: float) -> _S:
    """Timestep shift ``k s / (1 + (k - 1) s)`` (METHOD §1): keeps 0 and 1, and ``k > 1`` moves levels toward noise.

    Works on floats and tensors alike, returning the same kind.
    """
    if not k > 0:
        raise ValueError(f"shift factor k must be > 0 (1 = no shift, > 1 = more steps near noise), got k={k}")
    return k * s / (1 + (k - 1) * s)


_shift = shift  # `sample_noise_levels` and `grid` take an argument named `shift` that hides the function


def sample_noise_levels(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    distribution: Literal["uniform", "logit_normal"] = "logit_normal",
    shift: float = 1.0,
    loc: float = 0.0,
    scale: float = 1.0,
    eps: float = 1e-3,
) -> Tensor:
    """Training noise levels (METHOD §1, §4): uniform or logit-normal (SD3), shifted, then kept in ``[eps, 1 - eps]``.

    The caller picks the shape, e.g. ``(B, L)`` for one level per chunk (Diffusion Forcing). Levels stay away from 0
    and 1 because the target ``eps - x0`` is degenerate there for a network that also sees ``x_s``.
    """
    if not 0 <= eps < 0.5:
        raise ValueError(f"eps must be in [0, 0.5) so that [eps, 1 - eps] is not empty, got eps={eps}")
    if distribution == "uniform":
        s = torch.rand(shape, generator=generator, device=device)
    elif distribution == "logit_normal":
        if not scale > 0:
            raise ValueError(f"scale (the std of the logit) must be > 0, got scale={scale}; use 1.0 for SD3's default")
        s = torch.sigmoid(loc + scale * torch.randn(shape, generator=generator, device=device))
    else:
        raise ValueError(f"distribution must be 'uniform' or 'logit_normal', got distribution={distribution!r}")
    return _shift(s, shift).clamp(eps, 1 - eps)


def grid(steps: int, shift: float = 1.0, *, few: bool, jump_from: float = 0.0) -> list[tuple[float, float, float]]:
    """``(s, step, d)`` triples from s = 1 to s = 0 on ``shift(linspace(1, 0, steps + 1))`` (METHOD §1, §5).

    Few and Multi mode share the update ``x <- x - step * u``; only ``d`` differs: Few mode tells the network the
    jump (``d = step``), Multi mode tells it ``d = 0``. Levels are computed in float64 and the ends are pinned to
    exactly 1 and 0, so the steps sum to 1 and sampling ends on data.

    ``jump_from > 0`` (Multi mode): ``steps - 1`` steps on the same shifted spacing cover ``[1, jump_from]`` and the
    last one goes from ``jump_from`` to 0, i.e. it returns the clean estimate there. On its own streamed history a
    tiny model's last low-noise Euler steps lose the mouth's timing and add drift (docs/benchmarks.md, "Where Multi
    mode loses the timing").
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"steps must be an integer >= 1 (jumps in Few mode, Euler/Heun steps in Multi), got steps={steps!r}"
        )
    if not 0.0 <= jump_from < 1.0:
        raise ValueError(f"jump_from is a noise level in [0, 1) (0: no jump), got jump_from={jump_from!r}")
    if few and jump_from > 0.0:
        raise ValueError(f"jump_from={jump_from} is for Multi mode: every Few-mode step is already a jump")
    if jump_from > 0.0 and steps > 1:
        above = _shift(torch.linspace(1.0, 0.0, steps, dtype=torch.float64), shift)  # steps - 1 steps over [1, 0]
        levels = (jump_from + (1.0 - jump_from) * above).tolist() + [0.0]  # ... squeezed onto [1, jump_from]
    else:
        levels = _shift(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).tolist()
    levels[0], levels[-1] = 1.0, 0.0  # k / (1 + (k - 1)) can round away from 1 for some k
    return [(a, a - b, (a - b) if few else 0.0) for a, b in zip(levels[:-1], levels[1:])]
