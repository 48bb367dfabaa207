"""`lightning-mf generate`: stream one clip from a first frame and a transcript, timed as the paper reports it.

Chunks are streamed with the KV cache (rolling ``--window`` plus the first-frame sink), so the clip may be longer than
the training windows. Each chunk is conditioned on the transcript words near it (``--text-span`` seconds), with
absolute times: rotary positions depend only on time differences, and the first-frame sink is re-indexed as the
window rolls (``models/masks.py``), so no other re-basing is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from tqdm import tqdm

from lightning_mf.batch import Cond
from lightning_mf.data.media import crop_resize, write_clip
from lightning_mf.spec import AVSpec
from lightning_mf.tools.evaluate import load_module, parse_mode

__all__ = ["first_frame_l1", "generate", "load_first_frame", "load_transcript", "words_near"]

DEFAULT_SPAN_CHUNKS = 4  # text span (in chunks) when the checkpoint does not record its training window
PROGRESS_AFTER = 8  # show a progress bar for streams longer than this many chunks


def generate(
    *,
    ckpt: str,
    first_frame: str | None = None,
    transcript: str | None = None,
    duration: float = 2.0,
    mode: str = "few4",
    window: int | None = 4,
    cfg_scale: float = 3.0,
    cfg_above: float = 0.0,
    shift: float = 3.0,
    seed: int = 0,
    out: str = "generated.mp4",
    text_span: float | None = None,
) -> dict[str, float]:
    """Stream a clip of ``duration`` seconds, write it as mp4 (with the audio track) and wav, print the timings.

    Timings, taken after a one-chunk warm-up stream: TTFC (time to first chunk) runs from the start of streaming
    (first-frame prefix included) to the first chunk's tokens; FPS is the streamed video frames (whole chunks) per
    second of streaming, tokens only: decoding tokens to pixels and waveforms (Griffin-Lim) is timed apart
    (``decode_s``). NFE per chunk counts a CFG step twice; writing each chunk to the KV cache costs one more forward,
    two with CFG (``cache_nfe_per_chunk``). Returns those numbers, with the written length (``duration_s``, ``frames``,
    ``audio_samples``: whole frames, the audio ending with the last frame) and ``chunks``.

    Args:
        ckpt: checkpoint of a training stage (1, 2 or Mutual Forcing).
        first_frame: image (png/jpg) of the character, centre-cropped to the model's aspect ratio and resized;
            required for models with video, unused by audio-only models.
        transcript: JSON list of ``{"token", "start", "end"}`` (seconds from the clip start); None: no speech.
        duration: seconds to generate (rounded to whole video frames; the last chunk is trimmed).
        mode: few<jumps> (Few mode, no CFG), multi<steps> (Multi mode, Euler, CFG), multi<steps>heun, or
            multi<steps>jump<level> (the last step a jump from that noise level to data).
        window: chunks kept in the KV cache besides the first-frame sink (None: all, cost grows with length).
        cfg_scale: classifier-free guidance scale of the Multi modes.
        cfg_above: guide the Multi modes only at noise levels above this (0: every step).
        shift: timestep shift of the sampling grid (use the model's few_shift for Few mode).
        seed: seed of the generation noise.
        out: path of the mp4; the wav is written beside it (same name, ``.wav``).
        text_span: seconds of transcript each chunk sees; default: the training window of the checkpoint's
            data (if recorded), else 4 chunks.
    """
    if not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"--duration must be a positive number of seconds, got {duration}")
    if window is not None and window < 1:
        raise ValueError(f"--window must be at least 1 chunk (or null for all), got {window}")
    if text_span is not None and not (math.isfinite(text_span) and text_span > 0):
        raise ValueError(f"--text-span must be a positive number of seconds, got {text_span}")
    for option, path in (("--first-frame", first_frame), ("--transcript", transcript)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{option} {path} does not exist")
    entries = load_transcript(transcript) if transcript is not None else []
    try:
        sampler = parse_mode(mode, cfg_scale, shift, cfg_above)
    except ValueError as exc:
        raise ValueError(f"--mode {mode!r}: {exc}") from exc

    module = load_module(ckpt)
    spec, seq = module.spec, module.seq
    frames = spec.frames_in(duration)
    if frames < 1:
        shortest = 0.5 / spec.fps
        raise ValueError(f"--duration {duration} s is under one video frame at {spec.fps} fps (>= {shortest:.4g} s)")
    chunks = -(-frames // spec.frames_per_chunk)
    has_video = "video" in seq.modalities
    mp4, wav = Path(out), Path(out).with_suffix(".wav")
    if has_video and mp4 == wav:
        raise ValueError(f"--out {out}: give the mp4 path; the wav is written beside it with the suffix .wav")
    if has_video and first_frame is None:
        raise ValueError(f"--first-frame is required: the model has a video tower ({'+'.join(seq.modalities)})")
    span = text_span if text_span is not None else _training_chunks(ckpt) * spec.chunk_seconds
    # The tool's window and seed; the cache is written at the model's own level (FlowModule.history_level).
    sampler = dataclasses.replace(sampler, window=window, seed=seed)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = module.to(device).eval()
    frame = load_first_frame(first_frame, spec) if has_video else None  # (1, 3, H, W) uint8
    prefix = seq.prefix(frame.to(device)) if frame is not None else None
    vocab = module.tower_config.vocab_size

    def cond_of(k: int) -> Cond:  # chunk k ends at k * chunk_seconds
        return Cond.from_transcripts([words_near(entries, k * spec.chunk_seconds, span)], vocab, device)

    with torch.no_grad():
        for _ in module.stream_chunks(prefix, cond_of, 1, 1, sampler):  # warm-up: first-call costs stay out of the timings
            pass
        tokens, ttfc, stream_s = _timed(module.stream_chunks(prefix, cond_of, 1, chunks, sampler), chunks, device)
        start = time.perf_counter()
        media = seq.decode(tokens)
        _sync(device)
        decode_s = time.perf_counter() - start

    samples = frames * spec.samples_per_frame if "audio" in media else 0
    trimmed = {"video": media["video"][0, :frames]} if "video" in media else {}
    if "audio" in media:
        trimmed["audio"] = media["audio"][0, :samples]
    written = write_clip(trimmed, spec, mp4)
    streamed = chunks * spec.frames_per_chunk
    result = {
        "duration_s": frames / spec.fps,
        "frames": float(frames),
        "audio_samples": float(samples),
        "fps": streamed / stream_s,
        "ttfc_s": ttfc,
        "stream_s": stream_s,
        "decode_s": decode_s,
        "nfe_per_chunk": float(sampler.nfe()),
        "cache_nfe_per_chunk": float(sampler.cache_nfe()),
        "chunks": float(chunks),
        "realtime_factor": streamed / spec.fps / stream_s,
    }
    if frame is not None:  # how far the clip strays from the character it was given (a faithful clip: a few levels)
        result["first_frame_l1"] = first_frame_l1(trimmed["video"][None], frame)
    _print_summary(result, written, mode, sampler.guidance, window, span, device, len(entries))
    return result


def first_frame_l1(video: Tensor, first: Tensor) -> float:
    """Mean ``|frame - first frame|`` in 0..255 levels of clips (B, T, 3, H, W) against their conditioning frames
    (B, 3, H, W): a clip that shows the character it was given stays within a few levels (a talking face moves
    only its mouth, eyes and outline); noise or another face is tens of levels away."""
    return float((video.float() - first.to(video.device).float()[:, None]).abs().mean())


def _timed(
    chunks: Iterator[dict[str, Tensor]], count: int, device: torch.device
) -> tuple[dict[str, Tensor], float, float]:
    """Run a stream: its tokens joined per modality, the time to its first chunk and its total time (seconds)."""
    pieces = []
    ttfc = 0.0
    _sync(device)
    start = time.perf_counter()
    for piece in tqdm(chunks, total=count, desc="chunks", unit="chunk", disable=count <= PROGRESS_AFTER):
        if not pieces:
            _sync(device)
            ttfc = time.perf_counter() - start
        pieces.append(piece)
    _sync(device)
    seconds = time.perf_counter() - start
    return {m: torch.cat([p[m] for p in pieces], dim=1) for m in pieces[0]}, ttfc, seconds


def load_first_frame(path: str, spec: AVSpec) -> Tensor:
    """An image file as uint8 (1, 3, H, W), centre-cropped to the spec's aspect ratio and resized (as the shards'
    frames are, :func:`lightning_mf.data.media.read_media`)."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))  # (h, w, 3); EXIF rotation applied
    except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"--first-frame {path} is not a readable image: {exc}") from exc
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1)  # (3, h, w)
    return crop_resize(image, spec.height, spec.width)[None].contiguous()


def load_transcript(path: str) -> list[dict[str, Any]]:
    """Read and check a transcript: a JSON list of ``{"token", "start", "end"}`` in seconds, 0 <= start <= end."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--transcript {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        kind = type(data).__name__
        raise ValueError(f'--transcript {path} must hold a JSON list of {{"token", "start", "end"}}, got a {kind}')
    entries = []
    for i, entry in enumerate(data):
        where = f"--transcript {path}: entry {i} {json.dumps(entry)}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not an object with token, start and end")
        missing = [key for key in ("token", "start", "end") if key not in entry]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}")
        times = [entry[key] for key in ("start", "end")]
        if any(isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) for t in times):
            raise ValueError(f"{where}: start and end must be numbers of seconds")
        if min(times) < 0:
            raise ValueError(f"{where} has a negative time")
        if entry["end"] < entry["start"]:
            raise ValueError(f"{where} ends before it starts")
        entries.append({"token": str(entry["token"]), "start": float(entry["start"]), "end": float(entry["end"])})
    return entries


def words_near(entries: list[dict[str, Any]], chunk_end: float, span: float) -> list[dict[str, Any]]:
    """The entries overlapping the ``span`` seconds that end at ``chunk_end``, or the first ``span`` seconds while
    ``chunk_end`` is inside them: chunks of the first window see its whole transcript, as in training (and as
    ``FlowModule.generate`` conditions a window), later chunks a window sliding with them. Times stay absolute."""
    low = max(0.0, chunk_end - span)
    high = low + span
    return [e for e in entries if e["end"] >= low and e["start"] <= high]


def _training_chunks(ckpt: str) -> int:
    """Chunks per training window of the data the checkpoint was trained on (``data.window_chunks``), if recorded."""
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)  # no copy of the weights
    except RuntimeError:  # not a zip-format file: mmap is unavailable
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    chunks = (checkpoint.get("datamodule_hyper_parameters") or {}).get("window_chunks")
    return int(chunks) if isinstance(chunks, int) and chunks > 0 else DEFAULT_SPAN_CHUNKS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print_summary(
    r: dict[str, float], written: list[str], mode: str, guidance: float, window: int | None, span: float,
    device: torch.device, words: int,
) -> None:
    print(f"wrote {' and '.join(written)}")
    print(
        f"{r['duration_s']:.3f} s: {int(r['frames'])} frames, {int(r['audio_samples'])} audio samples, "
        f"{int(r['chunks'])} chunks; {words} transcript entries, each chunk sees {span:.3g} s of them"
    )
    print(
        f"mode {mode} (CFG {guidance:g}), window {window if window is not None else 'all'}, on {device.type}: "
        f"NFE/chunk {int(r['nfe_per_chunk'])} (+{int(r['cache_nfe_per_chunk'])} cache write{'s' if r['cache_nfe_per_chunk'] > 1 else ''})"
    )
    if "first_frame_l1" in r:
        print(f"mean |frame - first frame| {r['first_frame_l1']:.1f} (0-255 levels)")
    print(
        f"FPS {r['fps']:.1f} (tokens only, {r['realtime_factor']:.2f}x real time), TTFC {r['ttfc_s'] * 1000:.1f} ms, "
        f"streaming {r['stream_s']:.3f} s, decoding {r['decode_s']:.3f} s"
    )
