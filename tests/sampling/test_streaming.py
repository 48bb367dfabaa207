"""stream(): chunk-by-chunk generation through the KV cache, for video, audio or both."""

from functools import partial

import pytest
import torch

from lightning_mf.batch import Cond
from lightning_mf.flow import grid
from lightning_mf.lit.base import SamplerConfig
from lightning_mf.models import AVTransformer, Tower, TowerConfig
from lightning_mf.sampling import integrate
from lightning_mf.sampling.streaming import stream
from lightning_mf.sequence import AVSequencer, concat
from lightning_mf.spec import AVSpec

SPEC = AVSpec()


def _model(modalities: tuple[str, ...]) -> tuple[AVTransformer, AVSequencer]:
    seq = AVSequencer(SPEC, modalities, patch=8, tubelet=2)
    torch.manual_seed(0)
    net = AVTransformer({m: Tower(seq.token_dim(m), TowerConfig(dim=32, depth=2, heads=2, vocab_size=16)) for m in seq.modalities}, SPEC.chunk_seconds)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.normal_(0, 0.1) if not name.startswith("gates") else p.fill_(0.5)
    return net.eval(), seq


@pytest.mark.parametrize("modalities", [("video",), ("audio",), ("video", "audio")])
def test_each_streamed_chunk_equals_a_full_forward_over_the_generated_history(modalities) -> None:
    net, seq = _model(modalities)
    prefix = seq.prefix(torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8))
    cond = Cond.from_transcripts([[{"token": "a", "start": 0.0, "end": 0.3}], []], 16)
    seen = []

    def one_step(velocity, noise):  # a one-step sampler that records what it was given
        u = velocity(noise, 0.7, 0.0)
        seen.append((noise, u))
        return {m: noise[m] - 0.7 * u[m] for m in noise}

    chunks = list(stream(net, seq, one_step, num_chunks=4, batch=2, prefix=prefix, cond=cond, ctx_s=0.0,
                         generator=torch.Generator().manual_seed(0)))
    assert len(chunks) == 4 and all(set(c) == set(modalities) for c in chunks)
    # Chunk 4 through the cache == one full block-causal forward over [prefix ; chunks 1..3 clean ; noise_4 at 0.7]
    history = {m: torch.cat([c[m] for c in chunks[:3]], dim=1) for m in modalities}
    noise, u_streamed = seen[-1]
    levels = {m: torch.zeros(history[m].shape[:2]) for m in modalities}
    last = {m: torch.full(noise[m].shape[:2], 0.7) for m in modalities}
    tokens = concat([prefix, seq.chunk_tokens(history, levels, 1, clean=True), seq.chunk_tokens(noise, last, 4, clean=True)])
    full = net(tokens, cond=cond)
    for m in modalities:
        n = noise[m].shape[1]
        assert (full[m][:, -n:] - u_streamed[m]).abs().max() < 1e-5


def test_streaming_is_deterministic_and_runs_past_the_training_length_with_a_window() -> None:
    net, seq = _model(("video", "audio"))
    prefix = seq.prefix(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    sample = partial(integrate, grid=grid(2, 1.0, few=False))
    run = lambda: list(stream(net, seq, sample, num_chunks=20, batch=1, prefix=prefix, window=3, generator=torch.Generator().manual_seed(5)))  # noqa: E731
    a, b = run(), run()
    assert len(a) == 20
    for x, y in zip(a, b):
        for m in x:
            assert torch.equal(x[m], y[m]) and torch.isfinite(x[m]).all()
    media = seq.decode({m: torch.cat([c[m] for c in a], dim=1) for m in ("video", "audio")})
    assert media["video"].shape == (1, 40, 3, 32, 32) and media["audio"].shape == (1, 40 * 1000)


@pytest.mark.parametrize(
    "sampler",
    [
        SamplerConfig(mode="few", steps=4), SamplerConfig(mode="multi", steps=5, cfg_scale=3.0), SamplerConfig(mode="multi", steps=3, heun=True),
        SamplerConfig(mode="multi", steps=5, cfg_scale=3.0, cfg_above=0.5),  # guides 4 of 5 steps (s = 1 .. 0.43)
    ],
)
def test_network_evaluations_per_chunk_are_what_nfe_reports_plus_the_cache_writes(sampler: SamplerConfig) -> None:
    net, seq = _model(("video", "audio"))
    calls = []

    def counted(tokens, **kwargs):
        calls.append(kwargs.get("write", False))
        return net(tokens, **kwargs)

    prefix = seq.prefix(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    cond = Cond.from_transcripts([[{"token": "a", "start": 0.0, "end": 0.3}]], 16)
    sample = partial(integrate, grid=sampler.grid(), heun=sampler.heun)
    guidance = {"cfg_scale": sampler.guidance, "cfg_above": sampler.cfg_above}
    for _ in stream(counted, seq, sample, num_chunks=3, batch=1, prefix=prefix, cond=cond, **guidance):
        pass
    caches = 2 if sampler.guidance != 1.0 else 1  # the unconditional branch of CFG keeps its own cache
    assert calls.count(True) == caches * (1 + 3)  # the prefix, then every chunk, into each cache
    assert calls.count(False) == 3 * sampler.nfe()


def test_a_transcript_given_per_chunk_reaches_each_chunk() -> None:
    """``cond`` may be a function of the chunk index (long streams: the words near each chunk); a constant function
    streams exactly like the transcript itself, and each chunk gets its own index."""
    net, seq = _model(("video", "audio"))
    prefix = seq.prefix(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    cond = Cond.from_transcripts([[{"token": "a", "start": 0.0, "end": 0.3}]], 16)
    sample = partial(integrate, grid=grid(2, 1.0, few=False))
    asked: list[int] = []
    run = lambda c: list(stream(net, seq, sample, num_chunks=3, batch=1, prefix=prefix, cond=c, generator=torch.Generator().manual_seed(1)))  # noqa: E731
    direct, per_chunk = run(cond), run(lambda k: asked.append(k) or cond)
    assert sorted(set(asked)) == [1, 2, 3]
    for a, b in zip(direct, per_chunk):
        assert all(torch.equal(a[m], b[m]) for m in a)
    assert any(not torch.equal(a[m], b[m]) for a, b in zip(direct, run(None)) for m in a)  # the transcript matters


def test_the_prefix_is_written_with_chunk_ones_transcript_into_each_branchs_cache() -> None:
    """The sink is cached once, before chunk 1, under chunk 1's conditioning (its unconditional version in CFG's
    second cache): the transcript of a later chunk must not leak into it."""
    net, seq = _model(("video", "audio"))
    prefix = seq.prefix(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    conds = {k: Cond.from_transcripts([[{"token": chr(97 + k), "start": 0.0, "end": 0.1}]], 16) for k in (1, 2)}
    writes: list[Cond] = []

    def recording(tokens, cond=None, cache=None, write=False, **options):
        if write:
            writes.append(cond)
        return net(tokens, cond=cond, cache=cache, write=write, **options)

    sample = partial(integrate, grid=grid(1, 1.0, few=False))
    list(stream(recording, seq, sample, num_chunks=2, batch=1, prefix=prefix, cond=lambda k: conds[k], cfg_scale=2.0))
    # prefix (cond, uncond), chunk 1 (cond, uncond), chunk 2 (cond, uncond)
    assert len(writes) == 6
    assert writes[0] is conds[1] and writes[2] is conds[1] and writes[4] is conds[2]
    for unconditional, k in ((writes[1], 1), (writes[3], 1), (writes[5], 2)):
        assert torch.equal(unconditional.mask, conds[k].unconditional().mask) and not torch.equal(unconditional.mask, conds[k].mask)


def test_context_noise_comes_from_the_streams_generator_alone() -> None:
    """With ``ctx_s > 0`` the written context is noised with the stream's generator: the same seed streams the same
    clip whatever the global RNG did, and the noise really changes what later chunks see."""
    net, seq = _model(("video", "audio"))
    prefix = seq.prefix(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    sample = partial(integrate, grid=grid(2, 1.0, few=False))

    def run(global_seed: int, ctx_s: float) -> list[dict[str, torch.Tensor]]:
        torch.manual_seed(global_seed)
        return list(stream(net, seq, sample, num_chunks=3, batch=1, prefix=prefix, ctx_s=ctx_s, generator=torch.Generator().manual_seed(4)))

    a, b, clean = run(0, 0.3), run(1, 0.3), run(0, 0.0)
    for x, y in zip(a, b):
        assert all(torch.equal(x[m], y[m]) for m in x)
    assert torch.equal(a[0]["video"], clean[0]["video"])  # chunk 1 sees only the prefix
    assert (a[-1]["video"] - clean[-1]["video"]).abs().max() > 1e-3
