"""AVTransformer against a reference written out here, and the paths the equivalence tests cannot see.

The equivalence tests (streaming == full forward, coupling, parity) compare the model with itself, so a residual
branch subtracted instead of added, the adaLN shift and scale chunks swapped or q and k swapped pass them: the
mutated network is the original one with negated or permuted weights. The golden tests below compute the forward
a second time, independently, from the definition (LayerNorm, adaLN ``x * (1 + scale) + shift``, RMS-normed q/k,
RoPE, masked softmax attention with the sink moved in time, gated cross-modal attention, time-only text
cross-attention, MLP, adaLN-Zero gates) and read each weight by its meaning (chunk 0 of the modulation is the
attention's shift, the first third of ``qkv`` the queries, ...), so any of those mutants moves the model away from it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_mf.batch import Cond
from lightning_mf.models import AVTransformer, KVCache, Layout, Tokens
from lightning_mf.models.tower import Block, Tower

from tiny_models import CHUNK_SECONDS, DIMS, PER_CHUNK, TINY, randomize, select, sequence

EPS = 1e-6  # every norm's epsilon
TOLERANCE = 2e-6  # relative to the largest output; float32 rounding leaves a few 1e-7
GATES = {"video_from_audio": (0.9, -0.6), "audio_from_video": (-0.7, 1.1)}  # per block: distinct signs and sizes


# ------------------------------------------------------------------------------------------------ the reference


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, D) -> (B, H, N, Dh)."""
    return x.view(*x.shape[:2], heads, -1).permute(0, 2, 1, 3)


def _merge(x: Tensor) -> Tensor:
    """(B, H, N, Dh) -> (B, N, D)."""
    return x.permute(0, 2, 1, 3).flatten(2)


def _rms(x: Tensor, weight: Tensor) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def _adaln(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=EPS) * (1 + scale) + shift


def _softmax_attention(q: Tensor, k: Tensor, v: Tensor, visible: Tensor) -> Tensor:
    """One query per batch and head: q (B, H, Dh), k and v (B, H, Nk, Dh), visible (Nk,) or (B, Nk)."""
    scores = torch.einsum("bhd,bhkd->bhk", q, k) / math.sqrt(q.shape[-1])
    visible = visible.expand(q.shape[0], -1)[:, None, :]
    weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.einsum("bhk,bhkd->bhd", weights, v)


def _self_attention(
    q: Tensor, k: Tensor, v: Tensor, queries: Tokens, keys: Tokens, tower: Tower, window: int | None
) -> Tensor:
    """Query by query: the keys it may see (clean and earlier, or same chunk and role; the window and the sink),
    the sink's keys rotated as if they sat ``max(0, k - 1 - W)`` chunks later. k is RMS-normed, not yet rotated."""
    out = torch.zeros_like(q)
    kc, kclean = keys.layout.chunk, keys.layout.clean
    for n in range(q.shape[2]):
        qc, qclean = int(queries.layout.chunk[n]), bool(queries.layout.clean[n])
        visible = (kclean & (kc < qc)) | ((kc == qc) & (kclean == qclean))
        pos = keys.pos.clone()
        if window is not None:
            visible &= (kc >= qc - window) | (kc == 0)
            pos[kc == 0, 0] += max(0, qc - 1 - window) * CHUNK_SECONDS
        if visible.any():  # a query with nothing to see (the video prefix looking at audio) gets zeros
            out[:, :, n] = _softmax_attention(q[:, :, n], tower.rope.rotate(k, pos), v, visible)
    return out


def _text_attention(block: Block, tower: Tower, x: Tensor, pos: Tensor, cond: Cond) -> Tensor:
    """Cross-attention to the transcript; both sides rotated by their time alone (row and column dropped)."""
    heads = block.heads
    text = F.layer_norm(tower.text.weight[cond.ids], (tower.dim,), tower.text_norm.weight, tower.text_norm.bias, EPS)
    q_time = torch.stack([pos[:, 0], torch.zeros_like(pos[:, 0]), torch.zeros_like(pos[:, 0])], dim=1)
    k_time = torch.stack([cond.time, torch.zeros_like(cond.time), torch.zeros_like(cond.time)], dim=-1)  # (B, T, 3)
    q = tower.rope.rotate(_heads(F.linear(F.layer_norm(x, x.shape[-1:], block.norm2.weight, block.norm2.bias, EPS),
                                          block.cross_q.weight, block.cross_q.bias), heads), q_time)
    k, v = F.linear(text, block.cross_kv.weight, block.cross_kv.bias).split(tower.dim, dim=-1)
    k, v = tower.rope.rotate(_heads(k, heads), k_time), _heads(v, heads)
    out = torch.stack([_softmax_attention(q[:, :, n], k, v, cond.mask) for n in range(q.shape[2])], dim=2)
    return F.linear(_merge(out), block.cross_proj.weight, block.cross_proj.bias)


def reference(
    model: AVTransformer, tokens: dict[str, Tokens], d: Tensor, cond: Cond, window: int | None = None
) -> dict[str, Tensor]:
    """The full forward of ``model`` from its definition, without any of AVTransformer's code."""
    h, mods, final = {}, {}, {}
    for m, t in tokens.items():
        tower = model.towers[m]
        h[m] = F.linear(t.x, tower.embed.weight, tower.embed.bias)
        step = torch.where(t.layout.clean, torch.zeros(()), d[:, None])  # context at d = 0
        c = F.silu(tower.s_embed(t.s) + tower.d_embed(step))
        mods[m] = F.linear(c, tower.adaln.weight, tower.adaln.bias).view(*c.shape[:2], 6, tower.dim)
        final[m] = F.linear(c, tower.final_adaln.weight, tower.final_adaln.bias).split(tower.dim, dim=-1)
    for i in range(model.depth):
        q, k, v, mod = {}, {}, {}, {}
        for m, t in tokens.items():
            tower = model.towers[m]
            block = tower.blocks[i]
            mod[m] = (mods[m] + block.modulation).unbind(2)  # attention shift, scale, gate; MLP shift, scale, gate
            a = _adaln(h[m], mod[m][0], mod[m][1])
            qm, km, vm = F.linear(a, block.qkv.weight, block.qkv.bias).split(tower.dim, dim=-1)
            q[m] = tower.rope.rotate(_rms(_heads(qm, block.heads), block.q_norm.weight), t.pos)
            k[m], v[m] = _rms(_heads(km, block.heads), block.k_norm.weight), _heads(vm, block.heads)
        new = {}
        for m, t in tokens.items():
            tower = model.towers[m]
            block = tower.blocks[i]
            out = _self_attention(q[m], k[m], v[m], t, t, tower, window)
            for o in tokens:
                if o != m:
                    gate = torch.tanh(model.gates[f"{m}_from_{o}"][i])
                    out = out + gate * _self_attention(q[m], k[o], v[o], t, tokens[o], model.towers[o], window)
            x = h[m] + mod[m][2] * F.linear(_merge(out), block.proj.weight, block.proj.bias)
            x = x + _text_attention(block, tower, x, t.pos, cond)
            y = _adaln(x, mod[m][3], mod[m][4])
            hidden = F.gelu(F.linear(y, block.mlp.fc1.weight, block.mlp.fc1.bias), approximate="tanh")
            new[m] = x + mod[m][5] * F.linear(hidden, block.mlp.fc2.weight, block.mlp.fc2.bias)
        h = new
    return {m: F.linear(_adaln(h[m], *final[m]), model.towers[m].out.weight, model.towers[m].out.bias) for m in tokens}


# ------------------------------------------------------------------------------------------------ fixtures


def _model(modalities: tuple[str, ...]) -> AVTransformer:
    """Every parameter at std 0.3 (adaLN-Zero layers, d path and text output included), the gates set by hand."""
    towers = {m: randomize(Tower(DIMS[m], TINY), std=0.3, seed=s) for s, m in enumerate(modalities)}
    model = AVTransformer(towers, CHUNK_SECONDS)
    with torch.no_grad():
        for name, gate in model.gates.items():
            gate.copy_(torch.tensor(GATES[name]))
    return model


def _tokens(modalities: tuple[str, ...], clean: int, noisy: list[int], seed: int = 0) -> dict[str, Tokens]:
    """Clean chunks 0 (the video prefix) .. ``clean``, then the noisy copies of chunks ``noisy``; every token at its
    own time, video tokens on a 2 x 2 grid (row and column both move), noise levels in (0, 1) for the noisy ones."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modalities:
        chunks = [0] * (m == "video") + list(range(1, clean + 1)) + noisy
        flags = [True] * (len(chunks) - len(noisy)) + [False] * len(noisy)
        per = 4 if m == "video" else PER_CHUNK[m]
        chunk = torch.tensor(chunks).repeat_interleave(per)
        is_clean = torch.tensor(flags).repeat_interleave(per)
        index = torch.arange(per).repeat(len(chunks))
        time = (chunk - 1).clamp(min=0) * CHUNK_SECONDS + index * CHUNK_SECONDS / per
        grid = (index // 2, index % 2) if m == "video" else (torch.zeros(len(chunk)), torch.zeros(len(chunk)))
        pos = torch.stack([time.float(), grid[0].float(), grid[1].float()], dim=1)
        s = torch.where(is_clean, 0.0, 0.2 + 0.6 * torch.rand(2, len(chunk), generator=g))
        out[m] = Tokens(torch.randn(2, len(chunk), DIMS[m], generator=g), s, pos, Layout(chunk, is_clean))
    return out


def _cond() -> Cond:
    """Two rows of different lengths (one padded), an id at the top of the vocabulary, every word at its own time."""
    ids = torch.tensor([[0, TINY.vocab_size, 3], [0, 5, 0]])
    time = torch.tensor([[0.0, 0.06, 0.3], [0.0, 0.2, 0.0]])
    return Cond(ids, time, torch.tensor([[True, True, True], [True, True, False]]))


def _error(got: Tensor, want: Tensor) -> float:
    """Largest difference relative to the largest value of ``want``."""
    assert want.abs().max() > 0.3, "a vanishing output would make the comparison vacuous"
    return float((got - want).abs().max() / want.abs().max())


def _close(got: dict[str, Tensor], want: dict[str, Tensor]) -> None:
    for m in want:
        assert _error(got[m], want[m]) < TOLERANCE, m


# ------------------------------------------------------------------------------------------------ tests

CASES = {  # modalities, clean chunks, noisy chunks, window, transcript and step size given
    "video_defaults": (("video",), 2, [1, 2], None, False),  # no transcript (the null token), d left at its default 0
    "audio": (("audio",), 2, [1, 2], None, True),
    "joint": (("video", "audio"), 2, [1, 2], None, True),
    "video_window": (("video",), 3, [3], 1, True),  # chunk 3 sees the sink moved by 1 chunk
    "joint_window": (("video", "audio"), 4, [4], 1, True),  # chunks 3 and 4 see the video sink moved by 1 and 2 chunks
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_equals_the_reference_written_from_the_definition(case: str) -> None:
    """The forward (teacher-forcing layout, Few-mode d, transcript, cross-modal gates, a windowed sink) is the
    computation its definition spells out: kills residual sign flips, swapped adaLN chunks and swapped q/k, which no
    self-equivalence test can see."""
    modalities, clean, noisy, window, given = CASES[case]
    model, tokens = _model(modalities), _tokens(modalities, clean, noisy)
    cond, d = (_cond(), torch.tensor([0.25, 0.5])) if given else (Cond.null(2), torch.zeros(2))
    with torch.no_grad():
        got = model(tokens, d=d, cond=cond, window=window) if given else model(tokens, window=window)
        _close(got, reference(model, tokens, d, cond, window))


def test_a_streaming_step_of_one_modality_reads_the_other_from_the_cache() -> None:
    """A forward with tokens of one modality only still attends, through its gate, to the other modality's cached
    keys: equal to the full forward over what the cache holds plus the current chunk, and to the reference."""
    model, cond, d = _model(("video", "audio")), _cond(), torch.zeros(2)
    full = sequence(("video", "audio"), 2)
    with torch.no_grad():
        cache = KVCache()
        model({"video": select(full["video"], full["video"].layout.chunk == 0)}, cond=cond, cache=cache, write=True)
        # the first step: audio chunk 1 while the cache holds the video prefix only
        audio1 = {"audio": select(full["audio"], full["audio"].layout.chunk == 1)}
        seen = {"video": select(full["video"], full["video"].layout.chunk == 0), **audio1}
        _close(model(audio1, cond=cond, cache=cache), {"audio": reference(model, seen, d, cond)["audio"]})
        model({m: select(t, t.layout.chunk == 1) for m, t in full.items()}, cond=cond, cache=cache, write=True)
        for m, o in (("video", "audio"), ("audio", "video")):  # chunk 2 of m; the cache holds chunks <= 1 of both
            step = {m: select(full[m], full[m].layout.chunk == 2)}
            context = {o: select(full[o], full[o].layout.chunk <= 1), m: full[m]}
            got = model(step, cond=cond, cache=cache)[m]
            assert _error(got, model(context, cond=cond)[m][:, -PER_CHUNK[m]:]) < TOLERANCE
            assert _error(got, reference(model, context, d, cond)[m][:, -PER_CHUNK[m]:]) < TOLERANCE
            alone = KVCache()  # without the other modality's cache the step differs: the comparison is not vacuous
            alone.k[m], alone.v[m], alone.layouts[m] = cache.k[m], cache.v[m], cache.layouts[m]
            assert _error(model(step, cond=cond, cache=alone)[m], got) > 1e-2


def test_text_cross_attention_rotates_by_time_only() -> None:
    """The transcript is placed by time alone: moving a query's row or column leaves the text attention unchanged,
    moving queries and words by the same time leaves it unchanged (relative time), moving only the words changes it."""
    model = _model(("video",))
    tower = model.towers["video"]
    block = tower.blocks[0]
    t = _tokens(("video",), 2, [])["video"]
    h = torch.randn(2, len(t.layout), tower.dim, generator=torch.Generator().manual_seed(3))
    cond = _cond()

    def attend(pos: Tensor, shift: float = 0.0) -> Tensor:
        moved = Cond(cond.ids, cond.time + shift, cond.mask)
        return AVTransformer._cross_attend(block, h, AVTransformer._time_rotation(tower, pos), AVTransformer._text(tower, moved, h.device))

    with torch.no_grad():
        base = attend(t.pos)
        other_grid = t.pos.clone()
        other_grid[:, 1:] = 7 * torch.rand(len(t.pos), 2, generator=torch.Generator().manual_seed(4))
        later = t.pos.clone()
        later[:, 0] += 0.75
        assert _error(attend(other_grid), base) < TOLERANCE
        assert _error(attend(later, shift=0.75), base) < TOLERANCE
        assert _error(attend(t.pos, shift=0.75), base) > 1e-2


def test_transcript_ids_up_to_vocab_size_are_valid_and_beyond_raise() -> None:
    """The embedding has vocab_size + 1 rows (0 is the null token): id == vocab_size is used, id == vocab_size + 1
    is refused with a message naming the id and the bound (not an IndexError from the embedding)."""
    model = _model(("video",))
    tokens = _tokens(("video",), 1, [])
    top = Cond(torch.tensor([[0, TINY.vocab_size]] * 2), torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool))
    below = Cond(torch.tensor([[0, TINY.vocab_size - 1]] * 2), torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.bool))
    with torch.no_grad():
        assert _error(model(tokens, cond=top)["video"], model(tokens, cond=below)["video"]) > 1e-2  # its own row
        beyond = Cond(top.ids + torch.tensor([0, 1]), top.time, top.mask)
        bound = rf"transcript id {TINY.vocab_size + 1} exceeds .*vocab_size={TINY.vocab_size}"
        with pytest.raises(ValueError, match=bound):
            model(tokens, cond=beyond)


def _count_layers(model: AVTransformer, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    layer = model._layer

    def counted(*args: object) -> object:
        calls[0] += 1
        return layer(*args)

    monkeypatch.setattr(model, "_layer", counted)
    return calls


def test_activation_checkpointing_recomputes_layers_with_the_same_outputs_and_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Off by default; under grad, checkpointing runs each layer again in backward (2 x depth calls) and gives the
    same outputs and parameter gradients; without grad, or when writing a cache, it runs each layer once."""
    model, cond, d = _model(("video", "audio")), _cond(), torch.tensor([0.25, 0.5])
    tokens = _tokens(("video", "audio"), 2, [1, 2])
    weights = {m: torch.randn(t.x.shape, generator=torch.Generator().manual_seed(5)) for m, t in tokens.items()}
    calls = _count_layers(model, monkeypatch)

    def run(checkpointing: bool | None) -> tuple[dict[str, Tensor], list[Tensor], int]:
        if checkpointing is not None:  # None: the default (off)
            model.activation_checkpointing = checkpointing
        calls[0] = 0
        model.zero_grad()
        out = model(tokens, d=d, cond=cond)
        sum((out[m] * weights[m]).sum() for m in out).backward()
        return {m: o.detach() for m, o in out.items()}, [p.grad.clone() for p in model.parameters()], calls[0]

    plain, plain_grads, plain_calls = run(None)
    kept, kept_grads, kept_calls = run(True)
    assert (plain_calls, kept_calls) == (model.depth, 2 * model.depth)
    for m in plain:
        assert torch.allclose(kept[m], plain[m], rtol=0, atol=1e-6)
    assert max(g.abs().max() for g in plain_grads) > 0.1
    for got, want in zip(kept_grads, plain_grads):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    calls[0] = 0
    with torch.no_grad():
        model(tokens, d=d, cond=cond)
    assert calls[0] == model.depth
    calls[0] = 0
    clean = {m: select(t, t.layout.clean) for m, t in tokens.items()}
    out = model(clean, cond=cond, cache=KVCache(), write=True)
    sum(o.sum() for o in out.values()).backward()
    assert calls[0] == model.depth  # a cache write keeps its activations


def test_forward_refuses_what_it_cannot_run_with_messages_that_say_why() -> None:
    """No tower, an unknown modality, a write without a cache and a moved sink without ``chunk_seconds`` are errors
    that name the fault, not a KeyError later or a silently unshifted sink."""
    with pytest.raises(ValueError, match="AVTransformer needs at least one tower"):
        AVTransformer({})
    model = _model(("video",))
    tokens = _tokens(("video", "audio"), 1, [])
    with pytest.raises(ValueError, match=r"no tower for \['audio'\]; this model has \['video'\]"):
        model(tokens)
    with pytest.raises(ValueError, match="write=True needs a cache"):
        model({"video": tokens["video"]}, write=True)
    unclocked = AVTransformer(dict(model.towers))  # no chunk_seconds
    far = _tokens(("video",), 3, [])  # chunk 3 with a window of 1 sees the sink moved by 1 chunk
    near = _tokens(("video",), 2, [])  # chunks up to W + 1 see the sink where it is: no clock needed
    assert unclocked(near, window=1)["video"].shape == (2, 12, DIMS["video"])
    with pytest.raises(ValueError, match="moves the sink in time: build AVTransformer with chunk_seconds"):
        unclocked(far, window=1)
