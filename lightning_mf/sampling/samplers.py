"""Integrators over any velocity callable (METHOD §1, §5): one update rule for Multi and Few mode.

``integrate`` walks a grid of ``(s, step, d)`` triples with ``x <- x - step * velocity(x, s, d)``; the grid
decides the mode (``flow.grid(steps, shift, few=...)``). Heun averages with the velocity at the Euler-predicted
point for instantaneous steps (d = 0), except the last step to s = 0, as in EDM. CFG is a wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning_mf.flow import AV, Velocity

__all__ = ["guided", "integrate", "nfe"]


def integrate(velocity: Velocity, x: AV, grid: Sequence[tuple[float, float, float]], *, heun: bool = False) -> AV:
    """Integrate from the first grid level to the last; returns a new dict (the input is not modified)."""
    for s, step, d in grid:
        u = velocity(x, s, d)
        if heun and d == 0.0 and s - step > 0:
            predicted = {m: x[m] - step * u[m] for m in x}
            u_next = velocity(predicted, s - step, 0.0)
            u = {m: (u[m] + u_next[m]) / 2 for m in x}
        x = {m: x[m] - step * u[m] for m in x}
    return x


def guided(cond: Velocity, uncond: Velocity, scale: float) -> Velocity:
    """Classifier-free guidance ``u0 + scale (u1 - u0)``; scale 1 is ``cond`` alone (no extra evaluation)."""
    if scale == 1.0:
        return cond

    def velocity(x: AV, s: float, d: float) -> AV:
        u1, u0 = cond(x, s, d), uncond(x, s, d)
        return {m: u0[m] + scale * (u1[m] - u0[m]) for m in u1}

    return velocity


def nfe(grid: Sequence[tuple[float, float, float]], *, heun: bool = False, cfg: bool = False) -> int:
    """Network evaluations of one ``integrate`` run (Heun adds one per corrected step; CFG doubles)."""
    evaluations = sum(1 + (heun and d == 0.0 and s - step > 0) for s, step, d in grid)
    return evaluations * (2 if cfg else 1)
