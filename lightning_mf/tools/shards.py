"""`lightning-mf shards {synthetic,folder,inspect}`: write WebDataset shards and look inside them."""

from __future__ import annotations

import time
from pathlib import Path

from lightning_mf.data.shards import ShardSummary, folder_sources, read_index, synthetic_sources, write_shards
from lightning_mf.data.synthetic import SYNTHETIC_VERSION

__all__ = ["folder", "inspect", "synthetic", "synthetic_origin"]


def synthetic(
    *,
    preset: str = "tiny",
    num_clips: int = 64,
    out: str = "data/tiny",
    seed: int = 0,
    val_fraction: float = 0.1,
    max_clips_per_shard: int = 1000,
    overwrite: bool = False,
) -> ShardSummary:
    """Write shards of synthetic talking characters (deterministic for a seed).

    Args:
        preset: size preset: tiny (32x32, 16 fps, 2 s) or small (64x64, 25 fps, 5 s).
        num_clips: clips to generate.
        out: output folder for train-%06d.tar, val-%06d.tar and index.json.
        seed: base seed; clip i is generated from (seed, i).
        val_fraction: fraction of clips held out for validation.
        max_clips_per_shard: clips per tar before a new shard starts.
        overwrite: replace shards already in the output folder.
    """
    from lightning_mf.data.synthetic import PRESETS

    sources = synthetic_sources(preset, num_clips, seed)
    spec = PRESETS[preset].spec
    summary = ShardSummary(
        fps=spec.fps, sample_rate=spec.sample_rate, height=spec.height, width=spec.width,
        clip_seconds=PRESETS[preset].clip_seconds, origin=synthetic_origin(preset, seed),
    )
    return _run(sources, out, summary, val_fraction, max_clips_per_shard, overwrite)


def synthetic_origin(preset: str, seed: int) -> str:
    """The ``origin`` that ``synthetic`` records in index.json (how the pipeline recognises shards it can reuse)."""
    return f"synthetic v{SYNTHETIC_VERSION} preset={preset} seed={seed}"


def folder(
    *,
    src: str,
    out: str,
    fps: int = 16,
    sample_rate: int = 16000,
    size: int | tuple[int, int] = 32,
    clip_seconds: float = 2.0,
    val_fraction: float = 0.1,
    max_clips_per_shard: int = 1000,
    overwrite: bool = False,
) -> ShardSummary:
    """Write shards from a folder of talking-character videos (mp4 with an audio track, or mp4 + wav).

    Each file is resampled to fps and sample_rate, centre-cropped and resized to size, and cut into
    non-overlapping clips of clip_seconds; a sibling <name>.json transcript (list of token/start/end) is cut
    with it. Files that cannot be used are skipped and listed in the summary and in index.json.

    Args:
        src: folder searched recursively for *.mp4.
        out: output folder for the shards and index.json.
        fps: target video frame rate.
        sample_rate: target audio sample rate (a multiple of fps).
        size: target frame size, one int for square frames or [height, width].
        clip_seconds: clip length in seconds.
        val_fraction: fraction of source files held out for validation (split by file, not by clip).
        max_clips_per_shard: clips per tar before a new shard starts.
        overwrite: replace shards already in the output folder.
    """
    height, width = (size, size) if isinstance(size, int) else size
    sources = folder_sources(src, fps=fps, sample_rate=sample_rate, size=(height, width), clip_seconds=clip_seconds)
    summary = ShardSummary(
        fps=fps, sample_rate=sample_rate, height=height, width=width, clip_seconds=clip_seconds, origin=f"folder {src}"
    )
    return _run(sources, out, summary, val_fraction, max_clips_per_shard, overwrite)


def _run(sources, out: str, summary: ShardSummary, val_fraction: float, max_clips_per_shard: int, overwrite: bool) -> ShardSummary:
    started = time.perf_counter()
    summary = write_shards(
        sources, out, summary, val_fraction=val_fraction, max_clips_per_shard=max_clips_per_shard, overwrite=overwrite
    )
    seconds = time.perf_counter() - started
    clips = sum(info["clips"] for info in summary.splits.values())
    megabytes = sum((Path(out) / name).stat().st_size for info in summary.splits.values() for name in info["shards"]) / 1e6
    parts = [f"{info['clips']} {split} clips in {len(info['shards'])} shard(s)" for split, info in summary.splits.items()]
    print(f"wrote {' and '.join(parts)} to {out} ({megabytes:.1f} MB in {seconds:.1f} s, {clips / seconds:.1f} clips/s)")
    if summary.skipped:
        print(f"skipped {len(summary.skipped)} of {summary.sources} sources:")
        for entry in summary.skipped:
            print(f"  {entry['source']}: {entry['reason']}")
    print(f"index: {Path(out) / 'index.json'}")
    return summary


def inspect(*, data: str = "data/tiny", window_chunks: int = 4, frames_per_chunk: int = 2, batch_size: int = 8) -> dict[str, tuple[int, ...]]:
    """Load one training batch through AVDataModule and print what a model would receive.

    Args:
        data: shard folder (with index.json).
        window_chunks: chunks per window.
        frames_per_chunk: video frames per chunk.
        batch_size: windows per batch.
    """
    from lightning_mf.codecs import MelCodec, PatchCodec
    from lightning_mf.data.datamodule import AVDataModule
    from lightning_mf.spec import AVSpec

    index = read_index(data)
    samples_per_frame = index["sample_rate"] // index["fps"]
    spec = AVSpec(
        fps=index["fps"], sample_rate=index["sample_rate"], height=index["height"], width=index["width"],
        frames_per_chunk=frames_per_chunk, mel_hop=samples_per_frame // 4 if samples_per_frame % 4 == 0 else samples_per_frame,
    )
    datamodule = AVDataModule(root=data, spec=spec, window_chunks=window_chunks, batch_size=batch_size)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    patch = next(p for p in (8, 4, 2, 1) if spec.height % p == 0 and spec.width % p == 0 and spec.height // p >= 4)
    video_tokens, audio_tokens = PatchCodec(spec, patch=patch).encode(batch.video), MelCodec(spec).encode(batch.audio)
    splits = ", ".join(f"{info['clips']} {split} clips in {len(info['shards'])} shard(s)" for split, info in index["splits"].items())
    print(f"{data}: {splits}; {index['fps']} fps, {index['sample_rate']} Hz, {index['height']}x{index['width']} px, {index['clip_seconds']} s clips")
    print(f"one training batch: {batch.size} windows of {window_chunks} chunks x {frames_per_chunk} frames ({window_chunks * spec.chunk_seconds:.2f} s)")
    shapes = {
        "video": tuple(batch.video.shape), "audio": tuple(batch.audio.shape),
        "video_tokens": tuple(video_tokens.shape), "audio_tokens": tuple(audio_tokens.shape),
    }
    print(f"  video         {shapes['video']} {batch.video.dtype}  (B, T, C, H, W)")
    print(f"  audio         {shapes['audio']} {batch.audio.dtype}  (B, samples)")
    print(f"  video tokens  {shapes['video_tokens']}  PatchCodec(patch={patch})")
    print(f"  audio tokens  {shapes['audio_tokens']}  MelCodec(hop={spec.mel_hop}, {spec.mels_per_frame} mel frames per video frame)")
    first = batch.meta[0]
    print(f"  first window: {first['key']} from {first['start']:.2f} s, transcript {[e['token'] for e in first['transcript']]}")
    return shapes
