"""Train/inference parity: the parallel teacher-forced view that stage 3 trains on (``TeacherForced``, the Few
mode's ShortCut/DMD inputs and the Multi-mode teacher) computes, for every chunk, exactly the velocity ``stream()``
computes for it through the KV cache, on the same history, input, noise level, step size and guidance.

Every parameter, the zero-initialised layers and the cross-modal gates included, is drawn at std 0.2, so every path
(the step-size embedding, text cross-attention, the coupling) moves the velocity; a mismatch of any of them shows.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_mf.batch import Cond
from lightning_mf.flow import AV
from lightning_mf.lit import MutualForcing
from lightning_mf.models import TowerConfig
from lightning_mf.objectives.flow_matching import TeacherForced
from lightning_mf.sampling import guided
from lightning_mf.sampling.streaming import stream

TOWER = TowerConfig(dim=32, depth=2, heads=2, vocab_size=16)
MODALITIES = {"joint": ("video", "audio"), "video": ("video",), "audio": ("audio",)}
LEVEL = 0.6  # the noise level every chunk's recorded velocity is taken at
TOLERANCE = 1e-5  # relative to the largest velocity


pytestmark = pytest.mark.filterwarnings("ignore:tokens of .* are wider than the tower")  # learnability, not parity


def _model(kind: str, **options: object) -> MutualForcing:
    tower = dataclasses.replace(TOWER, **options)
    model = MutualForcing(modalities=MODALITIES[kind], tower=tower, distill_cfg=5.0, sd_weight=0.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.net.parameters():  # every parameter: gates, adaLN-Zero, d_embed's last layer, outputs
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model.eval()


def _parity(kind: str, *, d: float = 0.0, cfg: float = 1.0, window: int | None = None, ctx_s: float = 0.0,
            chunks: int = 4, teacher: bool = False, **options: object) -> float:
    """Largest difference, relative to the largest velocity, between the streamed and the parallel velocity of every
    chunk. ``teacher``: the parallel side is the training teacher (``MutualForcing._multi_cfg``, guidance
    ``distill_cfg``) and the stream is guided at that scale."""
    model = _model(kind, **options)
    seq, batch = model.seq, 2
    frames = torch.randint(0, 255, (batch, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    prefix = seq.prefix(frames)
    cond = Cond.from_transcripts([[{"token": "a", "start": 0.05, "end": 0.3}], [{"token": "o", "start": 0.2, "end": 0.45}]], 16)
    inputs: list[AV] = []
    streamed: list[AV] = []
    written: list[AV] = []

    def one_jump(velocity, noise: AV) -> AV:  # records the velocity each chunk is given at (LEVEL, d)
        u = velocity(noise, LEVEL, d)
        inputs.append(noise)
        streamed.append(u)
        return {m: noise[m] - LEVEL * u[m] for m in noise}

    scale = model.distill_cfg if teacher else cfg
    for _ in stream(model.net, seq, one_jump, num_chunks=chunks, batch=batch, prefix=prefix, cond=cond, cfg_scale=scale,
                    window=window, ctx_s=ctx_s, generator=torch.Generator().manual_seed(2), on_write=written.append):
        pass

    history = {m: torch.cat([w[m] for w in written[:-1]], dim=1) for m in seq.modalities}  # what the cache held
    levels = {m: torch.full(h.shape[:2], ctx_s) for m, h in history.items()} if ctx_s > 0 else None
    few = TeacherForced(model.net, seq, history, prefix, cond, levels, window)
    velocity = model._multi_cfg(few) if teacher else guided(few, few.using(cond=cond.unconditional()), cfg)
    with torch.no_grad():
        parallel = velocity({m: torch.cat([x[m] for x in inputs], dim=1) for m in seq.modalities}, LEVEL, d)
    worst = 0.0
    for m in seq.modalities:
        reference = torch.cat([u[m] for u in streamed], dim=1)
        assert reference.abs().max() > 0.1  # a real velocity, not the zeros of an untrained output layer
        worst = max(worst, ((parallel[m] - reference).abs().max() / reference.abs().max()).item())
    return worst


@pytest.mark.parametrize("kind", ["joint", "video"])
@pytest.mark.parametrize("d", [1 / 32, 0.25, 0.5, 1.0])
def test_few_mode_jumps_see_the_context_streaming_writes(kind: str, d: float) -> None:
    assert _parity(kind, d=d) < TOLERANCE


@pytest.mark.parametrize("kind", ["joint", "video", "audio"])
def test_multi_mode_with_cfg_is_the_same_operator_in_training_and_streaming(kind: str) -> None:
    assert _parity(kind, cfg=3.0) < TOLERANCE


def test_the_distillation_teacher_is_the_streamed_multi_mode_with_its_guidance() -> None:
    assert _parity("joint", teacher=True) < TOLERANCE


@pytest.mark.parametrize("kind", ["joint", "video"])
@pytest.mark.parametrize("window", [1, 2])
def test_rolling_windows_past_their_length_see_the_same_sink_and_history(kind: str, window: int) -> None:
    assert _parity(kind, d=0.25, cfg=3.0, window=window, chunks=window + 4) < TOLERANCE


@pytest.mark.parametrize("kind", ["joint", "video"])
def test_the_transcript_track_is_read_alike_in_training_and_streaming(kind: str) -> None:
    """Tokens that read the transcript frame by frame (``transcript_track``) get it at the same times from the cache
    and in the parallel view, for the guided Few mode through a rolling window."""
    assert _parity(kind, d=0.25, cfg=3.0, window=2, chunks=5, transcript_track=True) < TOLERANCE


@pytest.mark.parametrize("kind", ["joint", "video"])
def test_the_first_frame_input_is_read_alike_in_training_and_streaming(kind: str) -> None:
    """Video tokens that read the first frame at their patch (``first_frame_input``) get it from the cache the sink
    was written to, for both CFG branches and past a rolling window, as they get it from the sink in the parallel view."""
    assert _parity(kind, d=0.25, cfg=3.0, window=2, chunks=5, first_frame_input=True) < TOLERANCE


def test_a_preconditioned_velocity_is_the_same_in_training_and_streaming() -> None:
    assert _parity("joint", d=0.25, cfg=3.0, ctx_s=0.1, skip_sigma=0.6) < TOLERANCE


def test_context_written_at_a_noise_level_with_seeded_noise() -> None:
    assert _parity("joint", d=0.5, window=1, ctx_s=0.1, chunks=5) < TOLERANCE


@pytest.mark.parametrize("window", [1, 2])
def test_a_long_streams_chunk_sees_what_the_last_chunk_of_a_training_window_saw(window: int) -> None:
    """Keys are re-indexed as the window rolls: chunk 12 of a stream gets the velocity that the last chunk of a
    short training window gets from the same sink, history and input (the sink stays W + 1 chunks behind instead of
    drifting 11 chunks away, a distance no training window shows). The short window holds the depth * W chunks the
    last chunk's receptive field reaches (each layer looks W chunks further back through the keys it attends to)."""
    model = _model("joint")
    seq, far = model.seq, 12
    near = model.net.depth * window + 1
    g = torch.Generator().manual_seed(3)
    prefix = seq.prefix(torch.randint(0, 255, (2, 3, 32, 32), generator=g, dtype=torch.uint8))
    per_chunk = {m: seq.tokens_per_chunk(m) for m in seq.modalities}
    chunks = {m: torch.randn(2, far * n, seq.token_dim(m), generator=g) for m, n in per_chunk.items()}  # 1..12

    def velocity_of_last(first: int) -> AV:
        """Chunks first..12 played as chunks 1..(13 - first) of a window; the velocity of the last one."""
        part = {m: x[:, (first - 1) * per_chunk[m] :] for m, x in chunks.items()}
        history = {m: x[:, : -per_chunk[m]] for m, x in part.items()}
        with torch.no_grad():
            v = TeacherForced(model.net, seq, history, prefix, None, window=window)(part, LEVEL, 0.25)
        return {m: v[m][:, -per_chunk[m] :] for m in v}

    long, short = velocity_of_last(1), velocity_of_last(far - near + 1)
    for m in seq.modalities:
        assert ((long[m] - short[m]).abs().max() / short[m].abs().max()).item() < TOLERANCE
