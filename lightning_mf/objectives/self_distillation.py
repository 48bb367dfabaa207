"""Self-distillation of Mutual Forcing (METHOD §4.3): Multi mode teaches Few mode, ShortCut + DMD.

Pure functions over :data:`~lightning_mf.flow.Velocity` callables and modality dicts, so the tests check them on
closed-form flows and the LightningModule only wires networks into them.

- ShortCut (Frans et al. 2024): the average velocity over ``[s - d, s]`` is the mean of two half jumps; at the
  smallest step it is the Multi-mode velocity, with CFG when guidance is to be distilled into Few mode.
- DMD (Yin et al. 2024): push a Few-mode sample along ``fake_x0 - real_x0`` of its re-noised version, where
  the real score is the model's own Multi mode with CFG and the fake score tracks the Few-mode distribution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_mf.flow import AV, Velocity, grid
from lightning_mf.sampling.samplers import guided

__all__ = ["dmd_loss", "shortcut_pairs", "shortcut_target"]


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1) to scale tokens (B, N, C)."""
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def shortcut_pairs(steps: tuple[int, ...], shift: float, min_step: float) -> Tensor:
    """The ``(s, d, base, weight)`` rows ShortCut trains on (P, 4), float64.

    Every jump ``(s, D)`` of the few-step grids is halved recursively until ``d <= min_step``; each level holds the
    positions ``s, s - d, ...`` that the half jumps above it query. Rows at the last level are *base* pairs (their
    target is the Multi velocity). Weights give every grid, jump and level the same total mass, so the coarse jumps
    used at inference are not drowned by the many small ones.
    """
    if min_step <= 0:
        raise ValueError(f"min_step must be > 0 (the ShortCut recursion stops there), got {min_step}")
    rows: list[tuple[float, float, float, float]] = []
    for n in steps:
        jumps = [(s, d) for s, _, d in grid(n, shift, few=True)]
        for s, jump in jumps:
            levels = max(0, math.ceil(math.log2(jump / min_step))) + 1
            for j in range(levels):
                d = jump / 2**j
                for i in range(2**j):
                    rows.append((s - i * d, d, float(j == levels - 1), 1.0 / (len(steps) * len(jumps) * levels * 2**j)))
    return torch.tensor(rows, dtype=torch.float64)


def shortcut_target(
    few: Velocity,
    x: AV,
    s: Tensor,
    d: Tensor,
    base: Tensor,
    uncond: Velocity | None = None,
    cfg: float = 1.0,
    multi: Velocity | None = None,
) -> AV:
    """Stop-gradient ShortCut target for ``few(x, s, d)`` with per-sample ``s``, ``d`` (B,) and ``base`` (B,) bool.

    Base rows: the Multi velocity ``multi(x, s, 0)`` (default ``multi = few``: the model teaches itself), guided by
    ``uncond(x, s, 0)`` (the unconditional velocity of the same teacher) at scale ``cfg`` (needed only when
    ``cfg != 1``). Other rows: ``u1 = few(x, s, d/2)``, ``x' = x - d/2 u1``, ``u2 = few(x', s - d/2, d/2)``, target
    ``(u1 + u2) / 2`` (METHOD §4.3). With ``multi = few`` the base rows' Multi velocity and the other rows' first half
    jump are one call (``d`` is per sample), so a mixed batch costs two calls unguided, three guided; a separate
    teacher (an EMA, a frozen copy) costs one call more.
    """
    with torch.no_grad():
        if multi is None:
            first = few(x, s, torch.where(base, torch.zeros_like(d), d / 2))  # base rows: Multi; others: u1
            velocity = first
        else:
            first = few(x, s, d / 2) if bool((~base).any()) else None
            velocity = multi(x, s, torch.zeros_like(d)) if bool(base.any()) else None
        out = first
        if bool((~base).any()):
            half = d / 2
            u2 = few({m: x[m] - _per_sample(half, x[m]) * first[m] for m in x}, s - half, half)
            out = {m: (first[m] + u2[m]) / 2 for m in x}
        if bool(base.any()):
            if cfg != 1.0 and uncond is None:
                raise ValueError(f"shortcut_target: cfg={cfg:g} needs the unconditional velocity")
            v = guided(lambda *_: velocity, uncond, cfg)(x, s, 0.0)  # scale 1: ``velocity`` itself, no call
            out = v if out is None else {m: torch.where(_per_sample(base, v[m]).bool(), v[m], out[m]) for m in x}
        return out


def dmd_loss(sample: AV, real_x0: AV, fake_x0: AV) -> dict[str, Tensor]:
    """Distribution-matching loss per modality: its gradient w.r.t. ``sample`` is ``(fake_x0 - real_x0)``
    normalised per sample by ``mean |sample - real_x0|`` (DMD's adaptive weight), divided by the element count."""
    losses = {}
    for m, x in sample.items():
        with torch.no_grad():
            scale = (x - real_x0[m]).abs().flatten(1).mean(1).clamp_min(1e-6)  # (B,)
            grad = (fake_x0[m] - real_x0[m]) / _per_sample(scale, x)
            target = x - grad
        losses[m] = 0.5 * (x - target).pow(2).mean()
    return losses
