"""Core equivalences of the causal transformer: cached streaming == full forward, causality, coupling, d path."""

import pytest
import torch

from lightning_mf.batch import Cond
from lightning_mf.models import AVTransformer, KVCache, Layout, Tokens
from lightning_mf.models.layers import NoiseLevelEmbedding

from tiny_models import CHUNK_SECONDS, sequence, select, tower

MODELS = {"video": ("video_model", ("video",)), "audio": ("audio_model", ("audio",)), "joint": ("joint_model", ("video", "audio"))}


def _stream(model: AVTransformer, tokens: dict[str, Tokens], chunks: int, window: int | None, cond: Cond | None) -> dict[str, torch.Tensor]:
    """Chunk by chunk: prefix written first, then read chunk k with the cache and write it."""
    cache, outs = KVCache(window), {m: [] for m in tokens}
    prefix = {m: select(t, t.layout.chunk == 0) for m, t in tokens.items() if bool((t.layout.chunk == 0).any())}
    if prefix:
        for m, out in model(prefix, cond=cond, cache=cache).items():
            outs[m].append(out)
        model(prefix, cond=cond, cache=cache, write=True)
    for k in range(1, chunks + 1):
        part = {m: select(t, t.layout.chunk == k) for m, t in tokens.items()}
        for m, out in model(part, cond=cond, cache=cache).items():
            outs[m].append(out)
        model(part, cond=cond, cache=cache, write=True)
    return {m: torch.cat(o, dim=1) for m, o in outs.items()}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("autograd", [True, False], ids=["grad", "no_grad"])
def test_cached_streaming_equals_full_forward(kind: str, window: int | None, autograd: bool, request: pytest.FixtureRequest) -> None:
    """With autograd the cache concatenates; without it (generation) it reads its keys in place: both must stream."""
    fixture, modalities = MODELS[kind]
    model = request.getfixturevalue(fixture)
    chunks = 6
    tokens = sequence(modalities, chunks)
    cond = Cond.from_transcripts([[{"token": "a", "start": 0.1, "end": 0.3}], [{"token": "o", "start": 0.5, "end": 0.6}]], 16)
    full = model(tokens, cond=cond, window=window)
    with torch.set_grad_enabled(autograd):
        streamed = _stream(model, tokens, chunks, window, cond)
    for m in modalities:
        assert full[m].abs().max() > 0.1  # the comparison is not vacuous
        assert (streamed[m] - full[m]).abs().max() < 1e-5
    if window is not None:  # the window really changes the result, so the rolled cache matched a different mask
        unwindowed = model(tokens, cond=cond)
        assert max((unwindowed[m] - full[m]).abs().max() for m in modalities) > 1e-3


def test_rolled_cache_keeps_only_the_sink_and_the_window() -> None:
    model = AVTransformer({"video": tower("video")}, CHUNK_SECONDS)
    tokens = sequence(("video",), 8)
    cache = KVCache(window=3)
    model({"video": select(tokens["video"], tokens["video"].layout.chunk == 0)}, cache=cache, write=True)
    for k in range(1, 9):
        model({"video": select(tokens["video"], tokens["video"].layout.chunk == k)}, cache=cache, write=True)
    assert sorted(set(cache.layout("video").chunk.tolist())) == [0, 6, 7, 8]
    assert cache.get("video", 0)[0].shape[2] == 4 * 4  # 4 tokens per chunk


@pytest.mark.parametrize("kind", list(MODELS))
def test_future_chunks_do_not_change_the_past_but_do_change_the_future(kind: str, request: pytest.FixtureRequest) -> None:
    fixture, modalities = MODELS[kind]
    model = request.getfixturevalue(fixture)
    tokens = sequence(modalities, 4)
    before = model(tokens)
    k = 2
    for changed in modalities:  # perturb chunk k+1.. of one modality at a time
        perturbed = dict(tokens)
        t = tokens[changed]
        x = t.x.clone()
        x[:, t.layout.chunk > k] += torch.randn_like(x[:, t.layout.chunk > k])
        perturbed[changed] = Tokens(x, t.s, t.pos, t.layout)
        after = model(perturbed)
        for m in modalities:
            past = tokens[m].layout.chunk <= k
            assert (after[m][:, past] - before[m][:, past]).abs().max() < 1e-6, f"{changed} future leaked into {m}"
    for changed in modalities:  # and chunk k does reach later chunks of every modality (mask not too strict)
        perturbed = dict(tokens)
        t = tokens[changed]
        x = t.x.clone()
        x[:, t.layout.chunk == k] += 1.0
        perturbed[changed] = Tokens(x, t.s, t.pos, t.layout)
        after = model(perturbed)
        for m in modalities:
            later = tokens[m].layout.chunk > k
            assert (after[m][:, later] - before[m][:, later]).abs().max() > 1e-4, f"{changed} chunk {k} does not reach {m}"


def test_freshly_coupled_model_equals_the_unimodal_towers() -> None:
    video, audio = tower("video"), tower("audio", seed=1)
    tokens = sequence(("video", "audio"), 4)
    alone = {"video": AVTransformer({"video": video})({"video": tokens["video"]})["video"],
             "audio": AVTransformer({"audio": audio})({"audio": tokens["audio"]})["audio"]}
    coupled = AVTransformer({"video": video, "audio": audio})
    together = coupled(tokens)
    for m in ("video", "audio"):
        assert torch.equal(together[m], alone[m])
    with torch.no_grad():
        coupled.gates["audio_from_video"].fill_(0.5)
    assert not torch.allclose(coupled(tokens)["audio"], alone["audio"])  # the gate is the coupling


def test_adding_the_step_size_path_leaves_multi_mode_unchanged_and_context_ignores_d() -> None:
    model = AVTransformer({"video": tower("video")})
    t = sequence(("video",), 3)["video"]
    noisy = t.layout.chunk > 0  # chunks 1..3 being denoised (each sees the prefix and itself), the prefix clean
    tokens = {"video": Tokens(t.x, t.s, t.pos, Layout(t.layout.chunk, ~noisy))}
    with torch.no_grad():  # a model "trained with d = 0 only", then given a fresh (zero-output) d path
        model.towers["video"].d_embed = NoiseLevelEmbedding(model.towers["video"].dim, zero_last=True)
    base = model(tokens, d=0.0)["video"]
    assert torch.equal(model(tokens, d=0.25)["video"], base)
    assert torch.equal(model(tokens, d=torch.tensor([0.5, 0.125]))["video"], base)
    with torch.no_grad():
        torch.nn.init.normal_(model.towers["video"].d_embed.mlp[2].weight)
    jumped = model(tokens, d=0.25)["video"]
    assert (jumped[:, noisy] - base[:, noisy]).abs().min() > 0  # once trained, d matters for the noisy tokens...
    assert torch.equal(jumped[:, ~noisy], model(tokens, d=0.0)["video"][:, ~noisy])  # ...and never for the context


def test_resetting_the_step_size_path_keeps_multi_mode_and_makes_every_jump_equal_to_it() -> None:
    model = AVTransformer({"video": tower("video")})  # randomised: d_embed(0) is a large learned constant
    t = sequence(("video",), 3)["video"]
    tokens = {"video": Tokens(t.x, t.s, t.pos, Layout(t.layout.chunk, t.layout.chunk == 0))}
    multi = model(tokens, d=0.0)["video"]
    assert (model(tokens, d=0.5)["video"] - multi).abs().max() > 1e-2
    model.towers["video"].reset_step_size()
    assert torch.allclose(model(tokens, d=0.0)["video"], multi, rtol=1e-5, atol=1e-6)
    for d in (1 / 32, 0.25, 1.0):
        assert torch.equal(model(tokens, d=d)["video"], model(tokens, d=0.0)["video"])


def test_transcript_conditioning_and_its_dropout() -> None:
    model = AVTransformer({"video": tower("video")})
    tokens = sequence(("video",), 2)
    cond = Cond.from_transcripts([[{"token": "a", "start": 0.0, "end": 0.2}], [{"token": "i", "start": 0.1, "end": 0.2}]], 16)
    with_text, null = model(tokens, cond=cond)["video"], model(tokens, cond=None)["video"]
    assert (with_text - null).abs().max() > 1e-4
    assert torch.allclose(model(tokens, cond=cond.unconditional())["video"], null, atol=1e-6)
    dropped = model(tokens, cond=cond.drop(torch.tensor([True, False])))["video"]
    assert torch.allclose(dropped[0], with_text[0], atol=1e-6) and torch.allclose(dropped[1], null[1], atol=1e-6)


def test_coupled_towers_must_have_the_same_shape() -> None:
    from lightning_mf.models import Tower, TowerConfig

    with pytest.raises(ValueError, match="equal \\(dim, depth, heads\\)"):
        AVTransformer({"video": Tower(12, TowerConfig(dim=32, depth=2, heads=2)), "audio": Tower(8, TowerConfig(dim=32, depth=3, heads=2))})


@pytest.mark.parametrize("varied", ["s", "d"])
def test_a_step_whose_tokens_share_one_level_equals_the_per_token_modulation(varied: str, joint_model: AVTransformer) -> None:
    """A streaming step (every token at one (s, d)) takes broadcast adaLN rows; the same row inside a batch whose other
    row has another level or step size takes the per-token rows. Rows are independent, so the outputs must agree."""
    tokens = sequence(("video", "audio"), 2, batch=2)
    cond = Cond.from_transcripts([[{"token": "a", "start": 0.1, "end": 0.3}]] * 2, 16)
    with torch.no_grad():
        cache = KVCache()
        joint_model({m: select(t, t.layout.chunk <= 1) for m, t in tokens.items()}, cond=cond, cache=cache, write=True)
        step = {m: select(t, t.layout.chunk == 2) for m, t in tokens.items()}
        step = {m: Tokens(t.x, torch.full_like(t.s, 0.6), t.pos, Layout(t.layout.chunk, torch.zeros_like(t.layout.clean))) for m, t in step.items()}
        shared = joint_model(step, d=0.25, cond=cond, cache=cache)  # one (s, d) for every token
        if varied == "s":
            other = {m: Tokens(t.x, torch.stack([t.s[0], torch.full_like(t.s[1], 0.3)]), t.pos, t.layout) for m, t in step.items()}
            mixed = joint_model(other, d=0.25, cond=cond, cache=cache)
        else:
            mixed = joint_model(step, d=torch.tensor([0.25, 0.5]), cond=cond, cache=cache)
    for m in step:
        assert shared[m].abs().max() > 0.1 and (shared[m][1] - mixed[m][1]).abs().max() > 1e-3  # not vacuous
        assert (shared[m][0] - mixed[m][0]).abs().max() < 1e-5
