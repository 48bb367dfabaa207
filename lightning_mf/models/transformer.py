"""AVTransformer: runs one tower (a uni-modal model) or several (the joint model) over modality dicts.

Every forward takes ``{modality: Tokens}`` and returns ``{modality: velocity}``: training with the teacher-forcing
layout, a full block-causal forward, and cached chunk-by-chunk streaming are the same code with different
:class:`~lightning_mf.models.masks.Layout` s and an optional :class:`~lightning_mf.models.kv_cache.KVCache`.

Joint model (METHOD §3): in every block the queries of each modality attend to their own modality's keys and,
through a gate per block and direction initialised to zero, to the other modality's keys, under the same
block-causal rule (tokens of chunk k of either modality see both modalities' chunks <= k). Each modality keeps
its own projections, norms and MLPs (its tower). Because the gates start at exactly 0, a freshly coupled model
computes exactly what the two stage-1 towers compute.

Context tokens (the layout's clean ones: prefix, history, cached chunks) are always conditioned on step size 0:
only the tokens being denoised take the Few-mode jump ``d``, so the teacher-forced view that training uses and the
cache that streaming writes (at ``d = 0``) are the same computation (METHOD §1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from lightning_mf.batch import Cond
from lightning_mf.models.attention import LayoutMask, attend_layouts
from lightning_mf.models.kv_cache import KVCache
from lightning_mf.models.layers import modulate
from lightning_mf.models.masks import SINK_CHUNK, Layout, sink_shift
from lightning_mf.models.rope import Rope
from lightning_mf.models.tower import Tower

__all__ = ["AVTransformer", "Tokens"]


@dataclass
class Tokens:
    """One modality's part of a forward: features, per-token noise level, positions and layout."""

    x: Tensor  # (B, N, C) codec tokens (noisy or clean)
    s: Tensor  # (B, N) noise level of each token (0 = clean)
    pos: Tensor  # (N, 3) time in seconds, row, column
    layout: Layout  # chunk index and clean flag of each token


class AVTransformer(nn.Module):
    """A dict of towers run together; with two towers, zero-gated cross-modal attention couples them.

    Args:
        towers: ``{"video": Tower(...)}``, ``{"audio": Tower(...)}`` or both (then with equal dim/depth/heads).
        chunk_seconds: duration of a chunk; needed only by windowed forwards whose queries see a shifted sink.
    """

    def __init__(self, towers: dict[str, Tower], chunk_seconds: float | None = None) -> None:
        super().__init__()
        self.chunk_seconds = chunk_seconds  # seconds per chunk: how far a shifted sink moves (masks.sink_shift)
        if not towers:
            raise ValueError("AVTransformer needs at least one tower")
        shapes = {name: (t.dim, t.depth, t.heads) for name, t in towers.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"coupled towers need equal (dim, depth, heads) for fused attention, got {shapes}")
        self.towers = nn.ModuleDict(towers)
        self.depth = next(iter(towers.values())).depth
        self.gates = nn.ParameterDict(
            {f"{m}_from_{o}": nn.Parameter(torch.zeros(self.depth)) for m in towers for o in towers if m != o}
        )
        self.activation_checkpointing = False  # recompute each layer in backward instead of storing its activations

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.towers)

    def forward(
        self,
        tokens: dict[str, Tokens],
        d: Tensor | float = 0.0,
        cond: Cond | None = None,
        cache: KVCache | None = None,
        write: bool = False,
        window: int | None = None,
    ) -> dict[str, Tensor]:
        """Velocities ``{m: (B, N_m, C_m)}`` for the given tokens.

        Args:
            tokens: the modalities to run (a subset of the towers).
            d: step size (B,) or a float of the noisy (non-clean) tokens; 0 is Multi mode. Clean tokens get 0.
            cond: transcript conditioning; None means unconditional (the null token only).
            cache: keys/values of earlier chunks to attend to (streaming); its window overrides ``window``.
            write: append this forward's keys/values to ``cache`` (then roll its window).
            window: sliding window in chunks for a full forward (the mask equivalent of a rolling cache).
        """
        unknown = set(tokens) - set(self.towers)
        if unknown:
            raise ValueError(f"no tower for {sorted(unknown)}; this model has {list(self.towers)}")
        if write and cache is None:
            raise ValueError("write=True needs a cache")
        first = next(iter(tokens.values()))
        batch = first.x.shape[0]
        d = torch.as_tensor(d, dtype=torch.float32, device=first.x.device).expand(batch)
        window = cache.window if cache is not None else window
        names = list(tokens)
        sources = names + [m for m in (cache.layouts if cache is not None else {}) if m not in tokens and m in self.towers]

        cond = cond if cond is not None else Cond.null(batch, first.x.device)
        h, ada, final, text, rotations = {}, {}, {}, {}, {}
        for m in names:
            tower, t = self.towers[m], tokens[m]
            h[m] = tower.embed(t.x)  # (B, N, D)
            if tower.first_frame_embed is not None:
                h[m] = h[m] + tower.first_frame(self._first_frame_at(m, t, cache, write))
            track = tower.transcript_track(cond, t.pos[:, 0])
            if track is not None:
                h[m] = h[m] + track
            step = torch.where(t.layout.clean.to(d.device), 0.0, d[:, None])  # (B, N): context stays at d = 0
            ada[m], final[m] = self._modulation(tower, t.s.to(step.dtype), step)
            text[m] = self._text(tower, cond, t.x.device)
            rotations[m] = (tower.rope.rotation(t.pos), self._time_rotation(tower, t.pos))  # self- and text attention
        key_layouts = {}  # keys are [cached ; current] per source modality
        for o in sources:
            parts = [cache.layout(o) if cache is not None else None, tokens[o].layout if o in tokens else None]
            key_layouts[o] = Layout.cat([part for part in parts if part is not None])
        sinks = self._sink_copies(tokens, key_layouts, window)
        masks = {}
        for o in sources:
            k_layout, k_shift = key_layouts[o], None
            if o in sinks:
                index, shift = sinks[o]
                k_layout = Layout.cat([k_layout, Layout(k_layout.chunk[index], k_layout.clean[index])])
                k_shift = torch.cat([torch.zeros_like(k_layout.chunk[: len(key_layouts[o])]), shift])
            for m in names:
                masks[(m, o)] = LayoutMask(tokens[m].layout, k_layout, window, k_shift)
        written: dict[str, tuple[list[Tensor], list[Tensor]]] = {m: ([], []) for m in names}
        recompute = self.activation_checkpointing and torch.is_grad_enabled() and not write
        for i in range(self.depth):
            args = (i, h, ada, tokens, sources, masks, text, rotations, cache, sinks)
            if recompute:  # keep only each layer's input; recompute the layer in backward
                h, kv = torch.utils.checkpoint.checkpoint(self._layer, *args, use_reentrant=False)
            else:
                h, kv = self._layer(*args)
            for m in names if write else ():
                written[m][0].append(kv[m][0])
                written[m][1].append(kv[m][1])

        if write:
            for m in names:
                cache.append(m, tokens[m].layout, *written[m])
            cache.roll()
        out = {}
        for m in names:
            tower = self.towers[m]
            out[m] = tower.velocity(tokens[m].x, tokens[m].s, tower.out(modulate(tower.final_norm(h[m]), final[m][0], final[m][1])))
        return out

    @staticmethod
    def _first_frame_at(modality: str, tokens: Tokens, cache: KVCache | None, write: bool) -> Tensor:
        """The first frame's token at the patch of each token (B, N, C): from this forward's sink tokens (kept in the
        cache, with their patch lookup, when it is written), else from the cache."""
        sink = tokens.layout.chunk == SINK_CHUNK
        if bool(sink.any()):
            first = (tokens.x[:, sink], *_patch_lookup(tokens.pos[sink]))
            if write and cache is not None:
                cache.first_frame[modality] = first
        elif cache is not None and modality in cache.first_frame:
            first = cache.first_frame[modality]
        else:
            raise ValueError(
                f"tower.first_frame_input: the {modality} tower reads the first frame at every token, but this forward has "
                "no first-frame chunk (chunk 0) in its tokens or its cache"
            )
        x, table, cols = first
        wanted = (tokens.pos[:, 1] * cols + tokens.pos[:, 2]).long()  # (N,) patch of each token
        index = table[wanted.clamp(0, len(table) - 1)]
        if bool(((index < 0) | (wanted >= len(table))).any()):
            raise ValueError(f"tower.first_frame_input: some {modality} tokens lie at a patch the first frame does not have")
        return x.index_select(1, index)

    @staticmethod
    def _modulation(tower: Tower, s: Tensor, d: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """adaLN rows of tokens at levels ``s`` and step sizes ``d`` (B, N): (B, N, 6, D) for the blocks, and the final
        layer's shift and scale (B, N, D) each; (1, 1, ...) broadcast rows when every token shares one (s, d), as in
        a streaming step (nothing per token is materialised: a Multi-mode forward of 32 clips at chunk 1 went from 98 to
        79 ms on 2 cores)."""
        if s.shape[1] > 0 and bool((s == s[:1, :1]).all()) and bool((d == d[:1, :1]).all()):
            c = F.silu(tower.condition(s[:1, 0], d[:1, 0]))  # (1, D)
            return tower.adaln(c).view(1, 1, 6, tower.dim), tower.final_adaln(c).view(1, 1, 2 * tower.dim).chunk(2, dim=-1)
        # tokens of a chunk share (s, d): embed each distinct pair once, then give every token its pair's rows
        # (index_select, not x[which]: the backward of advanced indexing adds in a thread-dependent order on the CPU,
        # which breaks bitwise resume; index_select's backward is deterministic)
        batch = s.shape[0]
        pairs, which = torch.unique(torch.stack([s, d], -1).flatten(0, 1), dim=0, return_inverse=True)
        c = F.silu(tower.condition(pairs[:, 0], pairs[:, 1]))  # (U, D), U distinct pairs
        ada = tower.adaln(c).index_select(0, which).view(batch, -1, 6, tower.dim)  # (B, N, 6, D), shared by the blocks
        return ada, tower.final_adaln(c).index_select(0, which).view(batch, -1, 2 * tower.dim).chunk(2, dim=-1)

    def _layer(
        self, i: int, h: dict[str, Tensor], ada: dict[str, Tensor], tokens: dict[str, Tokens], sources: list[str],
        masks: dict[tuple[str, str], LayoutMask], text: dict[str, tuple[Tensor, tuple[Tensor, Tensor], Tensor]],
        rotations: dict[str, tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]], cache: KVCache | None,
        sinks: dict[str, tuple[Tensor, Tensor]],
    ) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
        """Block ``i`` of every tower: fused (gated cross-modal) self-attention, text cross-attention, MLP. Returns
        the new hidden states and this forward's keys/values per modality (for a cache write)."""
        names = list(tokens)
        q, keys, values, mod = {}, {}, {}, {}
        for m in names:
            block, rope, rotation = self.towers[m].blocks[i], self.towers[m].rope, rotations[m][0]
            mod[m] = ada[m] + block.modulation  # (B, N, 6, D): shift, scale, gate of attention, then of the MLP
            qkv = block.qkv(modulate(block.norm1(h[m]), mod[m][:, :, 0], mod[m][:, :, 1])).chunk(3, dim=-1)
            q[m] = rope.apply(block.q_norm(block.split_heads(qkv[0])), rotation)  # (B, H, N, Dh)
            keys[m] = rope.apply(block.k_norm(block.split_heads(qkv[1])), rotation)
            values[m] = block.split_heads(qkv[2])
            device = qkv[0].device.type
            if torch.is_autocast_enabled(device):  # attention runs in the autocast dtype: the cache is kept in it too
                low = torch.get_autocast_dtype(device)  # (the norms and rotation leave q and k in float32)
                q[m], keys[m], values[m] = q[m].to(low), keys[m].to(low), values[m].to(low)
        current = {m: (keys[m], values[m]) for m in names}
        for o in sources:  # keys are [cached ; current ; moved sink copies]
            cached = cache is not None and cache.layout(o) is not None
            parts = ([keys[o]], [values[o]]) if o in tokens else ([], [])
            if cached:  # read in place: no copy of the whole cache per forward (KVCache.extend)
                keys[o], values[o] = cache.extend(o, i, *parts)
            if o in sinks:  # the sink keys moved forward in time (RoPE angles add: rotate the rotated keys)
                index, shift = sinks[o]
                moved = torch.zeros(len(index), 3, device=index.device)
                moved[:, 0] = shift.float() * self.chunk_seconds
                sink_k, sink_v = self.towers[o].rope.rotate(keys[o][:, :, index], moved), values[o][:, :, index]
                if cached:
                    keys[o], values[o] = cache.extend(o, i, parts[0] + [sink_k], parts[1] + [sink_v])
                else:
                    keys[o], values[o] = torch.cat([keys[o], sink_k], dim=2), torch.cat([values[o], sink_v], dim=2)
        out_h = {}
        for m in names:
            block = self.towers[m].blocks[i]
            out = attend_layouts(q[m], keys[m], values[m], masks[(m, m)])  # (B, H, N, Dh)
            for o in sources:
                if o != m:
                    gate = torch.tanh(self.gates[f"{m}_from_{o}"][i])
                    out = out + gate * attend_layouts(q[m], keys[o], values[o], masks[(m, o)])
            x = h[m] + mod[m][:, :, 2] * block.proj(out.transpose(1, 2).flatten(2))
            x = x + self._cross_attend(block, x, rotations[m][1], text[m])
            out_h[m] = x + mod[m][:, :, 5] * block.mlp(modulate(block.norm3(x), mod[m][:, :, 3], mod[m][:, :, 4]))
        return out_h, current

    def _sink_copies(
        self, tokens: dict[str, Tokens], key_layouts: dict[str, Layout], window: int | None
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """For each key source holding sink tokens: the indices (M,) of the sink keys to copy and each copy's shift
        in chunks (M,), one copy of the sink per non-zero :func:`~lightning_mf.models.masks.sink_shift` among the
        queries. Empty when no query sees a shifted sink (no window, or every query within W + 1 chunks)."""
        if window is None:
            return {}
        shifts = torch.unique(torch.cat([sink_shift(t.layout.chunk, window) for t in tokens.values()]))
        shifts = shifts[shifts > 0]
        if len(shifts) == 0:
            return {}
        out = {}
        for o, layout in key_layouts.items():
            sink = (layout.chunk == SINK_CHUNK).nonzero().squeeze(1)
            if len(sink):
                out[o] = (sink.repeat(len(shifts)), shifts.repeat_interleave(len(sink)))
        if out and self.chunk_seconds is None:
            raise ValueError("a windowed forward past chunk window + 1 moves the sink in time: build AVTransformer with chunk_seconds")
        return out

    @staticmethod
    def _text(tower: Tower, cond: Cond, device: torch.device) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """Transcript embeddings (B, T, D), the rotation of their times and validity (B, T); the null token is always
        present, so unconditional rows attend to it alone."""
        if int(cond.ids.max()) > tower.vocab_size:
            raise ValueError(f"transcript id {int(cond.ids.max())} exceeds the tower's vocab_size={tower.vocab_size}")
        pos = torch.zeros(*cond.time.shape, 3, device=device)
        pos[..., 0] = cond.time
        return tower.text_norm(tower.text(cond.ids)), tower.rope.rotation(pos), cond.mask

    @staticmethod
    def _time_rotation(tower: Tower, pos: Tensor) -> tuple[Tensor, Tensor]:
        """The rotation of token positions (N, 3) by their time only: the text attention's query side."""
        time_pos = torch.zeros_like(pos)
        time_pos[:, 0] = pos[:, 0]
        return tower.rope.rotation(time_pos)

    @staticmethod
    def _cross_attend(block: nn.Module, h: Tensor, time_rotation: tuple[Tensor, Tensor], text: tuple[Tensor, tuple[Tensor, Tensor], Tensor]) -> Tensor:
        """Text cross-attention with time-only rotary positions on both sides (relative time of speech)."""
        text_h, text_rotation, text_mask = text
        q = Rope.apply(block.split_heads(block.cross_q(block.norm2(h))), time_rotation)  # (B, H, N, Dh)
        k, v = block.cross_kv(text_h).chunk(2, dim=-1)
        k = Rope.apply(block.split_heads(k), text_rotation)  # (B, H, T, Dh)
        out = F.scaled_dot_product_attention(q, k, block.split_heads(v), attn_mask=text_mask[:, None, None, :])
        return block.cross_proj(out.transpose(1, 2).flatten(2))


def _patch_lookup(pos: Tensor) -> tuple[Tensor, int]:
    """For first-frame tokens at positions (P, 3) (time, row, column): a table from patch index ``row * cols + col`` to
    the token's index (-1 where there is none), and ``cols``; computed once per first frame, not per forward."""
    cols = int(pos[:, 2].max()) + 1
    place = (pos[:, 1] * cols + pos[:, 2]).long()
    table = place.new_full((int(place.max()) + 1,), -1)
    table[place] = torch.arange(len(place), device=place.device)
    return table, cols
