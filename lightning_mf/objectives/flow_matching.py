"""Flow matching with teacher forcing (METHOD §4, stages 1 and 2).

The sequence is ``[prefix ; clean chunks 1..L ; noisy chunks 1..L]``: noisy chunk k sees the prefix, the clean
chunks < k and itself (see ``models/masks.py``), so all L chunks are trained in one pass, each with its own noise
level (Diffusion Forcing), per modality when ``independent_modalities``. The target is the velocity ``eps - x0``
at ``d = 0`` (Multi mode). Optional small noise on the clean context makes the model robust to the imperfect
history it will see when it generates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_mf.batch import Cond
from lightning_mf.flow import interpolate, sample_noise_levels, velocity_target
from lightning_mf.models.transformer import AVTransformer, Tokens
from lightning_mf.sequence import AVSequencer, concat

__all__ = ["FlowMatchingResult", "NoiseSchedule", "teacher_forcing_flow_matching"]


@dataclass(frozen=True)
class NoiseSchedule:
    """How training draws noise levels (METHOD §1).

    Args:
        distribution: ``logit_normal`` (SD3-style, concentrates on mid noise) or ``uniform``.
        shift: timestep shift applied to the drawn levels (> 1 trains more at high noise).
        loc, scale: logit-normal location and scale.
        independent_modalities: draw a separate level per modality and chunk (joint training); otherwise the
            modalities of a chunk share one level.
        context_noise: the clean context is noised to a level drawn uniformly from [0, context_noise].
    """

    distribution: Literal["uniform", "logit_normal"] = "logit_normal"
    shift: float = 1.0
    loc: float = 0.0
    scale: float = 1.0
    independent_modalities: bool = True
    context_noise: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.context_noise < 1.0:
            raise ValueError(f"NoiseSchedule.context_noise must be in [0, 1), got {self.context_noise}")

    def draw(self, batch: int, chunks: int, device: torch.device) -> Tensor:
        return sample_noise_levels(
            (batch, chunks), device=device, distribution=self.distribution, shift=self.shift, loc=self.loc, scale=self.scale
        )


@dataclass
class FlowMatchingResult:
    """Per-token squared errors ``{m: (B, N)}`` and the noise level of each token ``{m: (B, N)}``."""

    errors: dict[str, Tensor]
    levels: dict[str, Tensor]

    def loss(self, weights: dict[str, float] | None = None) -> Tensor:
        """``sum_m w_m * mean(errors_m)`` (METHOD §4.2: ``L_video + lambda_audio * L_audio``)."""
        weights = weights or {}
        return sum(weights.get(m, 1.0) * e.mean() for m, e in self.errors.items())

    def by_bucket(self, edges: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> dict[str, Tensor]:
        """Mean error per modality and noise-level bucket, e.g. ``{"video_s0.25-0.50": ...}`` (empty ones skipped)."""
        out = {}
        for m, e in self.errors.items():
            s = self.levels[m]
            for lo, hi in zip(edges[:-1], edges[1:]):
                inside = (s >= lo) & (s < hi) if hi < 1.0 else (s >= lo)
                if bool(inside.any()):
                    out[f"{m}_s{lo:.2f}-{hi:.2f}"] = e[inside].mean()
        return out


def teacher_forcing_flow_matching(
    net: AVTransformer,
    seq: AVSequencer,
    x0: dict[str, Tensor],
    prefix: dict[str, Tokens],
    cond: Cond | None,
    schedule: NoiseSchedule,
) -> FlowMatchingResult:
    """One teacher-forcing pass over clean chunk tokens ``x0 = {m: (B, L * tokens_per_chunk, C)}``."""
    first = next(iter(x0.values()))
    batch, device = first.shape[0], first.device
    chunks = first.shape[1] // seq.tokens_per_chunk(next(iter(x0)))
    shared = schedule.draw(batch, chunks, device)
    noisy, clean, levels, targets = {}, {}, {}, {}
    clean_levels = {}
    for m, x in x0.items():
        s_chunk = schedule.draw(batch, chunks, device) if schedule.independent_modalities else shared  # (B, L)
        s = seq.per_token(m, s_chunk)  # (B, N)
        eps = torch.randn_like(x)
        noisy[m], levels[m], targets[m] = interpolate(x, eps, s[..., None]), s, velocity_target(x, eps)
        if schedule.context_noise > 0:
            c = seq.per_token(m, torch.rand(batch, chunks, device=device) * schedule.context_noise)
            clean[m], clean_levels[m] = interpolate(x, torch.randn_like(x), c[..., None]), c
        else:
            clean[m], clean_levels[m] = x, torch.zeros_like(s)
    tokens = concat([prefix, seq.chunk_tokens(clean, clean_levels, 1, clean=True), seq.chunk_tokens(noisy, levels, 1, clean=False)])
    v = net(tokens, d=0.0, cond=cond)
    errors = {m: (v[m][:, -x.shape[1] :] - targets[m]).pow(2).mean(-1) for m, x in x0.items()}  # noisy part is last
    return FlowMatchingResult(errors=errors, levels=levels)
