"""Tower: the parameters of one modality's causal flow transformer (a DiT with adaLN-Zero, RoPE, text cross-attention).

A tower does not run by itself: :class:`~lightning_mf.models.transformer.AVTransformer` runs one tower (a
uni-modal model, stage 1) or two (the joint model, stage 2), so the uni-modal and joint stages share all code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from lightning_mf.batch import Cond
from lightning_mf.models.layers import MLP, NoiseLevelEmbedding, RMSNorm, zero_init
from lightning_mf.models.rope import Rope

__all__ = ["Block", "Tower", "TowerConfig"]


@dataclass(frozen=True)
class TowerConfig:
    """Size of one tower (every field becomes a ``--model.init_args.tower.*`` option).

    Args:
        dim: transformer width.
        depth: number of blocks.
        heads: attention heads (``dim / heads`` divisible by 8 for the rotary split).
        mlp_ratio: MLP hidden size as a multiple of ``dim``.
        vocab_size: transcript tokens are hashed into this many embeddings (index 0 is the null token of CFG).
        time_max_hz: fastest rotary time frequency; should resolve the finest token spacing (e.g. the mel hop).
        transcript_track: also add to every token an embedding of the transcript token spoken at its time (a pause
            and "no transcript" each have their own), read at each frame the token covers: the transcript's timing,
            start and end included, reaches every token directly instead of through cross-attention alone. ``true``
            for every tower, or the modalities whose towers read it (e.g. ``[audio]``).
        first_frame_input: the video tower also reads, at every token, the first frame's token at the same patch as a
            second input (the channel concatenation of image-to-video models such as SVD and Wan I2V): keeping the
            character no longer has to be learned as attention to the first-frame sink. Towers without a first frame
            (audio) ignore it.
        first_frame_dropout: in training forwards (train mode, with gradients), the fraction of rows whose first-frame
            input is left out (not rescaled: the rows that keep it see what sampling sees). Sampling, validation and
            no-grad passes always read it. With the input always there, the tiny video tower copies its first frame
            and never learns the transcript track (near pure noise, r 0.0 with the transcript against 0.4 without the
            input, 300 stage-1 steps; docs/benchmarks.md "The first frame blocks the transcript"). Stages 1-2 only:
            stage 3 rolls out Few mode with gradients and must see what streaming sees.
        skip_sigma: if set, the data's standard deviation, and the velocity is preconditioned as in EDM:
            ``v = c_skip(s) x_s + c_out(s) F`` with the linear skip that best predicts ``v = eps - x0`` from ``x_s``
            (``c_skip(1) = 1``: near pure noise the noise passes through the skip and the network only adds the
            clean image) and ``c_out`` the standard deviation of what is left. The objective and its optimum are
            unchanged; without it the network must copy the token's noise through every block to its output.
    """

    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    vocab_size: int = 256
    time_max_hz: float = 40.0
    transcript_track: bool | tuple[str, ...] = False
    first_frame_input: bool = False
    first_frame_dropout: float = 0.0
    skip_sigma: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.transcript_track, bool):
            object.__setattr__(self, "transcript_track", tuple(self.transcript_track))  # a YAML list
            unknown = sorted(set(self.transcript_track) - {"video", "audio"})
            if unknown:
                raise ValueError(f"TowerConfig: transcript_track lists modalities 'video' and 'audio', got {unknown}")
        if self.dim % self.heads or (self.dim // self.heads) % 8:
            raise ValueError(f"TowerConfig: dim={self.dim} / heads={self.heads} must be an integer head size divisible by 8")
        if self.skip_sigma is not None and not self.skip_sigma > 0:
            raise ValueError(f"TowerConfig: skip_sigma must be > 0 (the data's standard deviation) or null, got {self.skip_sigma}")
        if not 0.0 <= self.first_frame_dropout < 1.0:
            raise ValueError(f"TowerConfig: first_frame_dropout must be in [0, 1), got {self.first_frame_dropout}")
        if self.first_frame_dropout and not self.first_frame_input:
            raise ValueError("TowerConfig: first_frame_dropout drops the first-frame input; set first_frame_input: true too")
        if self.depth < 1:
            raise ValueError(f"TowerConfig: depth must be at least 1, got {self.depth}")

    def network(self) -> TowerConfig:
        """This config without its training-only options: what a checkpoint's weights must match (a stage may start
        from one trained with another ``first_frame_dropout``)."""
        return replace(self, first_frame_dropout=0.0)


class Block(nn.Module):
    """One DiT block: self-attention (run by the transformer, which may fuse modalities), text cross-attention,
    MLP; adaLN-Zero modulation with per-block offsets added to the tower's shared projection (as Wan does)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_q, self.cross_kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.cross_proj = zero_init(nn.Linear(dim, dim))  # text conditioning starts as a no-op
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.modulation = nn.Parameter(torch.zeros(6, dim))  # shift, scale, gate for attention and MLP

    def split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # (B, N, D) -> (B, H, N, Dh)


class Tower(nn.Module):
    """One modality's network parameters.

    Args:
        token_dim: size of the codec's tokens (e.g. PatchCodec.token_dim, MelCodec.token_dim).
        config: width, depth and the rest (:class:`TowerConfig`).
        track_offsets: where, relative to a token's time, the transcript track is read (seconds; e.g. the centres
            of a video tubelet's frames); used when ``config.transcript_track``.
        modality: what the tower generates (``video`` or ``audio``): the video tower is the one with a first frame
            (``config.first_frame_input``), and ``config.transcript_track`` may name towers. None: a tower of no
            particular modality, which reads the track only if every tower does.
    """

    def __init__(
        self, token_dim: int, config: TowerConfig = TowerConfig(), track_offsets: tuple[float, ...] = (0.0,), modality: str | None = None
    ) -> None:
        super().__init__()
        self.config = config
        dim, depth, heads, mlp_ratio = config.dim, config.depth, config.heads, config.mlp_ratio
        self.token_dim, self.dim, self.depth, self.heads, self.vocab_size = token_dim, dim, depth, heads, config.vocab_size
        self.embed = nn.Linear(token_dim, dim)
        # the first frame's token as a second input channel group, initialised as the token's own (channel concat)
        self.first_frame_embed = nn.Linear(token_dim, dim) if config.first_frame_input and modality == "video" else None
        self.s_embed = NoiseLevelEmbedding(dim)
        self.d_embed = NoiseLevelEmbedding(dim, zero_last=True)  # the Few-mode step size (METHOD §1)
        self.adaln = zero_init(nn.Linear(dim, 6 * dim))  # shared per-token modulation, offsets per block
        self.text = nn.Embedding(config.vocab_size + 1, dim)
        self.text_norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_adaln = zero_init(nn.Linear(dim, 2 * dim))
        self.out = zero_init(nn.Linear(dim, token_dim))
        self.rope = Rope(dim // heads, time_max_hz=config.time_max_hz)
        self.track_offsets = tuple(float(o) for o in track_offsets)
        self.track: nn.ModuleList | None = None
        tracked = config.transcript_track
        if tracked is True or (not isinstance(tracked, bool) and modality in tracked):
            # ids: 0 = no transcript, 1..vocab_size = tokens, vocab_size + 1 = a pause
            self.track = nn.ModuleList(nn.Embedding(config.vocab_size + 2, dim) for _ in self.track_offsets)
            # about the scale of the token embeddings; a smaller start trades the transcript for the frames (tiny
            # stage 1 at 600 steps: r 0.56 / 0.44 / 0.22 and FD clips 52 / 33 / 23 at std 0.5 / 0.1 / 0)
            for table in self.track:
                nn.init.normal_(table.weight, std=0.5)

    def velocity(self, x: Tensor, s: Tensor, out: Tensor) -> Tensor:
        """The velocity (B, N, C) from the network's output ``out`` for tokens ``x`` (B, N, C) at levels ``s`` (B, N):
        ``out`` itself, or preconditioned with the skip of ``config.skip_sigma``."""
        sigma = self.config.skip_sigma
        if sigma is None:
            return out
        s = s[..., None].to(x.dtype)
        var_x = (1 - s) ** 2 * sigma**2 + s**2  # Var(x_s) for x0 of std sigma and unit noise
        cov = s - (1 - s) * sigma**2  # Cov(v, x_s)
        c_skip = cov / var_x
        c_out = (1 + sigma**2 - cov**2 / var_x).clamp_min(0).sqrt()
        return c_skip * x + c_out * out

    def transcript_track(self, cond: Cond, times: Tensor) -> Tensor | None:
        """Sum over ``track_offsets`` of the embedding of what ``cond`` says is spoken at ``times + offset``:
        (B, N, D) for token times (N,), or None when the tower has no track."""
        if self.track is None:
            return None
        return sum(table(cond.spoken_at(times + offset, self.vocab_size + 1)) for table, offset in zip(self.track, self.track_offsets))

    def first_frame(self, first: Tensor) -> Tensor:
        """The first-frame input (B, N, D) from the first frame's token at each token's patch (B, N, C); in a training
        forward with gradients, zero for a ``config.first_frame_dropout`` fraction of the rows."""
        h = self.first_frame_embed(first)
        p = self.config.first_frame_dropout
        if p > 0 and self.training and torch.is_grad_enabled():
            h = h * (torch.rand(h.shape[0], 1, 1, device=h.device) >= p)
        return h

    def condition(self, s: Tensor, d: Tensor) -> Tensor:
        """Per-token conditioning vector (B, N, D) from noise levels s (B, N) and step sizes d (B, N)."""
        return self.s_embed(s) + self.d_embed(d)

    @torch.no_grad()
    def reset_step_size(self) -> None:
        """Make the step-size path inert again without changing Multi mode: fold the constant ``d_embed(0)`` it
        learned while every step had ``d = 0`` (stages 1-2) into ``s_embed``'s output bias, then zero its last layer.

        Afterwards a jump of any ``d`` computes exactly the Multi-mode velocity, so Few mode starts stage 3 as an
        Euler jump of Multi mode (METHOD §1)."""
        last = self.d_embed.mlp[2]
        self.s_embed.mlp[2].bias += self.d_embed(torch.zeros(1, device=last.weight.device))[0].to(last.bias.dtype)
        last.weight.zero_()
        last.bias.zero_()
