"""stream(): the only chunk-by-chunk generation loop (METHOD §5), shared by predict, generation, evaluation and the
Mutual Forcing rollout.

For each chunk: draw noise, run the given sampler (Multi mode: many d = 0 steps, optionally with CFG; Few mode:
a few jumps) with every velocity call attending to the KV cache, emit the chunk, then write it to the cache with one
more forward at the context noise level ``ctx_s`` and roll the window.

With CFG, the unconditional branch attends to its own cache, written without the transcript (one more write per
chunk): the unconditional model is the one that ``cfg_dropout`` trains, a window whose whole transcript was dropped,
and the one the training teacher evaluates (``TeacherForced.using(cond=unconditional)`` recomputes the context
without it), so the Multi mode + CFG evaluated here is the operator Few mode is distilled from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from lightning_mf.batch import Cond
from lightning_mf.flow import AV, Velocity, interpolate
from lightning_mf.models.kv_cache import KVCache
from lightning_mf.models.masks import Layout
from lightning_mf.models.transformer import AVTransformer, Tokens
from lightning_mf.sampling.samplers import guided
from lightning_mf.sequence import AVSequencer

__all__ = ["stream"]

Sampler = Callable[[Velocity, AV], AV]


def stream(
    net: AVTransformer,
    seq: AVSequencer,
    sample: Sampler,
    *,
    num_chunks: int,
    batch: int,
    prefix: dict[str, Tokens] | None = None,
    cond: Cond | Callable[[int], Cond] | None = None,
    cfg_scale: float = 1.0,
    cfg_above: float = 0.0,
    window: int | None = None,
    ctx_s: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    on_write: Callable[[AV], None] | None = None,
    substitute: Callable[[int, AV], AV] | None = None,
) -> Iterator[AV]:
    """Yield ``{m: (B, tokens_per_chunk, C)}`` for chunks 1..num_chunks of every modality of ``seq``.

    Args:
        net: the model (one or two towers, matching ``seq.modalities``).
        seq: codecs and chunk geometry.
        sample: ``sample(velocity, noise) -> x0``, e.g. ``partial(integrate, grid=grid(50, 3.0, few=False))``.
        num_chunks: chunks to generate (may exceed the training length when ``window`` is set).
        batch: number of streams generated together.
        prefix: the clean first-frame prefix (chunk 0), the window's sink.
        cond: transcript conditioning, or a function of the chunk index k >= 1 giving each chunk's (e.g. the words
            near it, for streams longer than the training windows); ``cfg_scale != 1`` guides against its
            unconditional version. The prefix is written with chunk 1's conditioning.
        cfg_above: guide only at noise levels above this (``samplers.guided``).
        window: chunks kept in the cache besides the sink (None keeps everything).
        ctx_s: noise level at which generated chunks are written to the cache (0 = clean).
        generator: source of all noise (initial and context), so a seeded generator makes the stream deterministic.
        on_write: called with each chunk as written to the cache (noised to ``ctx_s``): the context that later
            chunks saw, which a training step on this stream must condition on.
        substitute: ``substitute(k, x) -> x'`` replaces chunk k's sample before it is written and yielded: an oracle
            for experiments (e.g. the real chunk k, to see whether one bad chunk derails the rest of a stream).
    """
    cond_of = cond if callable(cond) else (lambda k: cond)
    guide = cfg_scale != 1.0 and cond_of(1) is not None
    caches = {"cond": KVCache(window), **({"uncond": KVCache(window)} if guide else {})}

    def condition(branch: str, k: int) -> Cond | None:
        c = cond_of(k)
        return c.unconditional() if branch == "uncond" else c

    if prefix:
        for branch, cache in caches.items():
            net(prefix, cond=condition(branch, 1), cache=cache, write=True)

    for k in range(1, num_chunks + 1):
        geometry = {m: seq.positions(m, k, 1, device=device) for m in seq.modalities}  # pos (n, 3), chunk (n,)

        def tokens(x: AV, s: float, clean: bool) -> dict[str, Tokens]:
            out = {}
            for m, (pos, chunk) in geometry.items():
                layout = Layout(chunk, torch.full_like(chunk, clean, dtype=torch.bool))
                out[m] = Tokens(x[m], x[m].new_full(x[m].shape[:2], float(s)), pos, layout)
            return out

        def velocity_of(branch: str) -> Velocity:
            c, cache = condition(branch, k), caches[branch]
            return lambda x, s, d: net(tokens(x, s, clean=False), d=d, cond=c, cache=cache)

        velocity = velocity_of("cond")
        if guide:
            velocity = guided(velocity, velocity_of("uncond"), cfg_scale, cfg_above)
        noise = {
            m: torch.randn(batch, seq.tokens_per_chunk(m), seq.token_dim(m), generator=generator, device=device)
            for m in seq.modalities
        }
        x = sample(velocity, noise)
        if substitute is not None:
            x = substitute(k, x)
        context = x if ctx_s == 0.0 else {
            m: interpolate(v, torch.randn(v.shape, generator=generator, device=v.device, dtype=v.dtype), ctx_s) for m, v in x.items()
        }
        for branch, cache in caches.items():
            net(tokens(context, ctx_s, clean=True), cond=condition(branch, k), cache=cache, write=True)
        if on_write is not None:
            on_write(context)
        yield x


# Not inference_mode: a training step with grad on will attend to this cache (LAYOUT §3.8). Torch wraps a generator
# chunk by chunk, so the caller's grad mode is untouched between chunks. Applied here rather than as a decorator
# because the mutation tester (scripts/mutation.sh) leaves decorated functions unmutated.
stream = torch.no_grad()(stream)
