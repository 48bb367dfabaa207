"""Flow matching with teacher forcing (METHOD §4, stages 1 and 2).

The sequence is ``[prefix ; clean chunks 1..L ; noisy chunks 1..L]``: noisy chunk k sees the prefix, the clean
chunks < k and itself (see ``models/masks.py``), so all L chunks are trained in one pass, each with its own noise
level (Diffusion Forcing), per modality when ``independent_modalities``. The target is the velocity ``eps - x0``
at ``d = 0`` (Multi mode). Optional small noise on the clean context makes the model robust to the imperfect
history it will see when it generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from lightning_mf.batch import Cond
from lightning_mf.flow import interpolate, sample_noise_levels, velocity_target
from lightning_mf.models.transformer import AVTransformer, Tokens
from lightning_mf.sequence import AVSequencer, concat

__all__ = ["FlowMatchingResult", "NoiseSchedule", "TeacherForced", "motion_weights", "teacher_forcing_flow_matching"]


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
        uniform_fraction: this fraction of the levels is drawn uniformly from (0, 1) instead, so that every level
            the samplers visit is trained. A logit-normal shifted by 3 puts 0.65% of its levels below s = 0.2, where
            Multi 50 (shift 3) starts its last 3 steps; untrained there, those steps add grain and colour drift
            (docs/benchmarks.md, "FD clips rewards grain").
    """

    distribution: Literal["uniform", "logit_normal"] = "logit_normal"
    shift: float = 1.0
    loc: float = 0.0
    scale: float = 1.0
    independent_modalities: bool = True
    context_noise: float = 0.0
    uniform_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.context_noise < 1.0:
            raise ValueError(f"NoiseSchedule.context_noise must be in [0, 1), got {self.context_noise}")
        if not 0.0 <= self.uniform_fraction <= 1.0:
            raise ValueError(f"NoiseSchedule.uniform_fraction must be in [0, 1], got {self.uniform_fraction}")

    def draw(self, batch: int, chunks: int, device: torch.device) -> Tensor:
        """Levels (batch, chunks)."""
        levels = sample_noise_levels(
            (batch, chunks), device=device, distribution=self.distribution, shift=self.shift, loc=self.loc, scale=self.scale
        )
        if self.uniform_fraction == 0:  # draws nothing more: runs without it stay bit for bit what they were
            return levels
        uniform = sample_noise_levels((batch, chunks), device=device, distribution="uniform")
        return torch.where(torch.rand((batch, chunks), device=device) < self.uniform_fraction, uniform, levels)


def motion_weights(x0: Tensor, tokens_per_chunk: int, strength: float) -> Tensor:
    """Per-token loss weights (B, N) of mean 1 that favour the token positions that change along the clip.

    A talking face is mostly still: on the synthetic characters the mouth is under 3% of the pixels but carries 88%
    of the chunk-to-chunk change, so a plain mean squared error spends almost all its signal on the still face and
    background, and the one part that must follow the transcript is learned last (issue 16). Each position's weight
    is ``1 + strength * v / mean(v)``, with ``v`` its variance over the window's chunks (the same weight in every chunk,
    so a mouth that stays closed is trained as much as one that opens), normalised to mean 1 per clip.
    ``x0``: clean tokens (B, L * tokens_per_chunk, C); strength 0 gives ones.
    """
    if strength < 0:
        raise ValueError(f"motion weight strength must be >= 0, got {strength}")
    batch, length, _ = x0.shape
    chunks = x0.reshape(batch, length // tokens_per_chunk, tokens_per_chunk, -1)  # (B, L, n, C)
    if strength == 0 or chunks.shape[1] < 2:
        return torch.ones(batch, length, device=x0.device, dtype=x0.dtype)
    change = chunks.detach().var(1).mean(-1)  # (B, n): how much each position moves over the window
    weight = 1 + strength * change / change.mean(1, keepdim=True).clamp_min(1e-12)  # (B, n); a still clip: ones
    return (weight / weight.mean(1, keepdim=True)).repeat(1, chunks.shape[1])  # (B, L * n), chunk-major like the tokens


@dataclass
class FlowMatchingResult:
    """Per-token squared errors ``{m: (B, N)}``, the noise level of each token ``{m: (B, N)}`` and, optionally, the
    per-token weights of the loss ``{m: (B, N)}`` (:func:`motion_weights`; missing = uniform)."""

    errors: dict[str, Tensor]
    levels: dict[str, Tensor]
    token_weights: dict[str, Tensor] = field(default_factory=dict)

    def loss(self, weights: dict[str, float] | None = None) -> Tensor:
        """``sum_m w_m * mean(token weights * errors_m)`` (METHOD §4.2: ``L_video + lambda_audio * L_audio``)."""
        weights = weights or {}
        return sum(weights.get(m, 1.0) * self._weighted(m).mean() for m in self.errors)

    def _weighted(self, modality: str) -> Tensor:
        errors = self.errors[modality]
        return errors * self.token_weights[modality] if modality in self.token_weights else errors

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


class TeacherForced:
    """The model's velocity for noisy chunks 1..L that see a clean *history* of chunks < k: the teacher-forcing
    layout ``[prefix ; history ; noisy]`` as a :data:`~lightning_mf.flow.Velocity` callable (METHOD §4).

    Stage 2 passes the real chunks as history (teacher forcing); Mutual Forcing passes what its Few mode rolled
    out, so its flow-matching, ShortCut and DMD terms all train every chunk in one pass on that history. The
    noisy chunks never attend to each other, so each one gets exactly what streaming gives it after generating
    the history chunk by chunk (the KV-cache equivalence of ``models/``).

    Args:
        net: the model to run (the shared model, a fake score or a frozen teacher).
        seq: chunk geometry.
        history: clean chunks ``{m: (B, H * tokens_per_chunk, C)}``, H >= 0 (chunks 1..H).
        prefix: the first-frame prefix (chunk 0).
        cond: transcript conditioning.
        history_levels: noise level of each history token ``{m: (B, H * n)}`` (context noise); None = clean.
        window: sliding window in chunks (the training equivalent of a rolling cache); None = all.
    """

    def __init__(
        self,
        net: AVTransformer,
        seq: AVSequencer,
        history: dict[str, Tensor],
        prefix: dict[str, Tokens],
        cond: Cond | None,
        history_levels: dict[str, Tensor] | None = None,
        window: int | None = None,
    ) -> None:
        self.net, self.seq, self.history, self.prefix, self.cond, self.window = net, seq, history, prefix, cond, window
        self.history_levels = history_levels or {m: torch.zeros(h.shape[:2], device=h.device) for m, h in history.items()}

    def using(self, *, net: AVTransformer | None = None, cond: Cond | None | str = "same") -> TeacherForced:
        """The same history seen by another network or under another conditioning (e.g. CFG's unconditional)."""
        return TeacherForced(
            net or self.net, self.seq, self.history, self.prefix, self.cond if cond == "same" else cond,
            self.history_levels, self.window,
        )

    def levels(self, modality: str, s: Tensor | float | dict[str, Tensor], like: Tensor) -> Tensor:
        """Per-token levels (B, N) from a float, per-sample (B,), per-chunk (B, L) or a dict of those."""
        s = s[modality] if isinstance(s, dict) else s
        s = torch.as_tensor(s, dtype=like.dtype, device=like.device)
        if s.ndim == 0:
            return s.expand(like.shape[:2])
        if s.ndim == 1:
            return s[:, None].expand(like.shape[:2])
        return self.seq.per_token(modality, s)

    def __call__(self, x: dict[str, Tensor], s: Tensor | float | dict[str, Tensor], d: Tensor | float = 0.0) -> dict[str, Tensor]:
        """Velocities ``{m: (B, L * n, C)}`` of the noisy chunks ``x`` at levels ``s`` and step sizes ``d`` (B,)."""
        levels = {m: self.levels(m, s, xm) for m, xm in x.items()}
        history = {m: h for m, h in self.history.items() if h.shape[1] > 0}
        parts = [self.prefix, self.seq.chunk_tokens(history, self.history_levels, 1, clean=True)] if history else [self.prefix]
        tokens = concat(parts + [self.seq.chunk_tokens(x, levels, 1, clean=False)])
        v = self.net(tokens, d=d, cond=self.cond, window=self.window)
        return {m: v[m][:, -xm.shape[1] :] for m, xm in x.items()}  # the noisy part is last


def teacher_forcing_flow_matching(
    net: AVTransformer,
    seq: AVSequencer,
    x0: dict[str, Tensor],
    prefix: dict[str, Tokens],
    cond: Cond | None,
    schedule: NoiseSchedule,
    history: dict[str, Tensor] | None = None,
    window: int | None = None,
    history_levels: dict[str, Tensor] | None = None,
    motion_weight: dict[str, float] | None = None,
) -> FlowMatchingResult:
    """One pass over clean chunk tokens ``x0 = {m: (B, L * tokens_per_chunk, C)}`` at ``d = 0``: every chunk
    learns its real flow given ``history`` (default: ``x0`` itself, i.e. teacher forcing). ``history_levels``
    ``{m: (B, H * n)}``: the history is already noised to these levels (a rollout written at ``ctx_s``) and is used
    as is; None: it is clean and gets the schedule's ``context_noise``. ``motion_weight`` ``{m: strength}``: weight
    those modalities' token errors by :func:`motion_weights` of ``x0``."""
    first = next(iter(x0.values()))
    batch, device = first.shape[0], first.device
    chunks = first.shape[1] // seq.tokens_per_chunk(next(iter(x0)))
    shared = schedule.draw(batch, chunks, device)
    history = x0 if history is None else history
    noisy, levels, chunk_levels, targets, context, context_levels = {}, {}, {}, {}, {}, {}
    for m, x in x0.items():
        s_chunk = schedule.draw(batch, chunks, device) if schedule.independent_modalities else shared  # (B, L)
        s = seq.per_token(m, s_chunk)  # (B, N)
        chunk_levels[m] = s_chunk
        eps = torch.randn_like(x)
        noisy[m], levels[m], targets[m] = interpolate(x, eps, s[..., None]), s, velocity_target(x, eps)
        h = history[m]
        if history_levels is not None:
            context[m], context_levels[m] = h, history_levels[m]
        elif schedule.context_noise > 0:
            c = seq.per_token(m, torch.rand(batch, h.shape[1] // seq.tokens_per_chunk(m), device=device) * schedule.context_noise)
            context[m], context_levels[m] = interpolate(h, torch.randn_like(h), c[..., None]), c
        else:
            context[m], context_levels[m] = h, torch.zeros(h.shape[:2], device=device)
    v = TeacherForced(net, seq, context, prefix, cond, context_levels, window)(noisy, chunk_levels, 0.0)
    errors = {m: (v[m] - targets[m]).pow(2).mean(-1) for m in x0}
    token_weights = {
        m: motion_weights(x0[m], seq.tokens_per_chunk(m), strength) for m, strength in (motion_weight or {}).items() if strength and m in x0
    }
    return FlowMatchingResult(errors=errors, levels=levels, token_weights=token_weights)
