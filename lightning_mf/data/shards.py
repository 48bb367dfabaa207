"""Turn clip sources into WebDataset shards: ``train-%06d.tar`` / ``val-%06d.tar`` plus ``index.json``.

One sample per clip with the keys ``mp4`` (lossless video, no audio track), ``wav`` (mono 16-bit PCM of the same
span) and ``json`` (metadata, see :class:`~lightning_mf.data.clip.Clip`). Each shard is written under a temporary
name and renamed when complete, and ``index.json`` is written last: a directory with an index holds only whole
shards. A source that cannot be read is skipped, counted and named in the index, never a crash halfway.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm.auto import tqdm

from lightning_mf.data.clip import Clip
from lightning_mf.data.media import encode_mp4, encode_wav, read_media
from lightning_mf.data.synthetic import PRESETS, synthesize_clip

__all__ = [
    "INDEX_NAME",
    "INDEX_FORMAT",
    "Source",
    "ShardSummary",
    "folder_sources",
    "read_index",
    "synthetic_sources",
    "write_shards",
]

INDEX_NAME = "index.json"
INDEX_FORMAT = "lightning-mf-shards/1"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Source:
    """One unit of input (a file, or one synthetic seed): an id for split assignment and a clip factory."""

    id: str
    clips: Callable[[], list[Clip]]


@dataclass
class ShardSummary:
    """What a run wrote; also the content of ``index.json``."""

    fps: int
    sample_rate: int
    height: int
    width: int
    clip_seconds: float
    origin: str
    sources: int = 0
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def frames_per_clip(self) -> int:
        return round(self.clip_seconds * self.fps)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "fps": self.fps,
            "sample_rate": self.sample_rate,
            "height": self.height,
            "width": self.width,
            "clip_seconds": self.clip_seconds,
            "frames_per_clip": self.frames_per_clip,
            "samples_per_clip": self.frames_per_clip * (self.sample_rate // self.fps),
            "origin": self.origin,
            "sources": self.sources,
            "splits": self.splits,
            "skipped": self.skipped,
        }


def read_index(root: str | Path) -> dict[str, Any]:
    """Load ``root/index.json`` with errors that say how to make one."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"shard directory {root} does not exist; write shards with `lightning-mf shards synthetic --out {root}` or `lightning-mf shards folder --src VIDEOS --out {root}`")
    path = root / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} has no {INDEX_NAME}: it is not a finished shard directory (empty, or shard writing was "
            f"interrupted); write shards with `lightning-mf shards synthetic --out {root}` or `lightning-mf shards folder`"
        )
    index = json.loads(path.read_text())
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path} has format {index.get('format')!r}, expected {INDEX_FORMAT!r}")
    return index


# ----------------------------------------------------------------------------------------------- sources


def synthetic_sources(preset: str, num_clips: int, seed: int = 0) -> list[Source]:
    """``num_clips`` synthetic talking characters; clip i uses seed ``seed * 2**32 + i``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    if num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}")
    config = PRESETS[preset]

    def factory(i: int) -> Callable[[], list[Clip]]:
        return lambda: [synthesize_clip(seed * 2**32 + i, config.spec, config.clip_seconds, key=f"synth{seed}-{i:06d}")]

    return [Source(id=f"synthetic:{preset}:{seed}:{i}", clips=factory(i)) for i in range(num_clips)]


def folder_sources(
    src: str | Path, *, fps: int, sample_rate: int, size: tuple[int, int], clip_seconds: float
) -> list[Source]:
    """Every ``*.mp4`` under ``src`` (recursively), cut into non-overlapping clips of ``clip_seconds``.

    Audio comes from a sibling ``<stem>.wav`` if present, else from the mp4's own track. A sibling
    ``<stem>.json`` (a list of ``{"token", "start", "end"}`` in seconds) is cut into each clip's transcript.
    """
    root = Path(src)
    if not root.exists():
        raise FileNotFoundError(f"source folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"source {root} is not a folder of mp4 files")
    videos = sorted(root.rglob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"source folder {root} holds no *.mp4 files (searched recursively)")
    if sample_rate % fps:
        raise ValueError(f"sample_rate={sample_rate} is not a multiple of fps={fps}: audio would not tile video frames")
    frames_per_clip = round(clip_seconds * fps)
    if frames_per_clip < 1:
        raise ValueError(f"clip_seconds={clip_seconds} is shorter than one frame at {fps} fps")

    def factory(video: Path) -> Callable[[], list[Clip]]:
        def clips() -> list[Clip]:
            wav = video.with_suffix(".wav")
            media = read_media(video, fps=fps, sample_rate=sample_rate, size=size, audio_path=wav if wav.is_file() else None)
            transcript_path = video.with_suffix(".json")
            transcript = _load_transcript(transcript_path) if transcript_path.is_file() else []
            spf = sample_rate // fps
            count = int(min(media.frames.shape[0], media.audio.shape[0] // spf) // frames_per_clip)
            if count == 0:
                raise ValueError(f"too short: {media.seconds:.2f} s < clip_seconds={clip_seconds}")
            stem = re.sub(r"[^A-Za-z0-9_-]", "_", str(video.relative_to(root).with_suffix("")))
            out = []
            for c in range(count):
                f0 = c * frames_per_clip
                start, end = f0 / fps, (f0 + frames_per_clip) / fps
                out.append(
                    Clip(
                        key=f"{stem}-{round(start * 1000):08d}",
                        video=media.frames[f0 : f0 + frames_per_clip],
                        audio=media.audio[f0 * spf : (f0 + frames_per_clip) * spf],
                        fps=fps,
                        sample_rate=sample_rate,
                        meta={
                            "fps": fps,
                            "sample_rate": sample_rate,
                            "num_frames": frames_per_clip,
                            "num_samples": frames_per_clip * spf,
                            "source": str(video.relative_to(root)),
                            "start": start,
                            "end": end,
                            "transcript": _cut_transcript(transcript, start, end),
                        },
                    )
                )
            return out

        return clips

    return [Source(id=str(v.relative_to(root)), clips=factory(v)) for v in videos]


def _load_transcript(path: Path) -> list[dict[str, Any]]:
    entries = json.loads(path.read_text())
    if not isinstance(entries, list) or not all(isinstance(e, dict) and {"token", "start", "end"} <= set(e) for e in entries):
        raise ValueError(f"{path.name}: transcript must be a list of {{'token', 'start', 'end'}} objects")
    return sorted(entries, key=lambda e: float(e["start"]))


def _cut_transcript(entries: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """Tokens overlapping [start, end), clipped to it, with times relative to ``start``."""
    out = []
    for e in entries:
        s, t = float(e["start"]), float(e["end"])
        if t > start and s < end:
            out.append({"token": str(e["token"]), "start": round(max(s, start) - start, 6), "end": round(min(t, end) - start, 6)})
    return out


# ----------------------------------------------------------------------------------------------- writing


class _AtomicShards:
    """Rotating tar writer: each shard goes to ``<name>.tmp`` and is renamed once closed."""

    def __init__(self, out: Path, split: str, max_clips: int, max_bytes: int) -> None:
        self.out, self.split, self.max_clips, self.max_bytes = out, split, max_clips, max_bytes
        self.shards: list[str] = []
        self.counts: list[int] = []
        self._writer: wds.TarWriter | None = None
        self._stream = None
        self._bytes = 0

    def write(self, sample: dict[str, Any]) -> None:
        if self._writer is None or self.counts[-1] >= self.max_clips or self._bytes >= self.max_bytes:
            self.close()
            name = f"{self.split}-{len(self.shards):06d}.tar"
            self._stream = open(self.out / f"{name}.tmp", "wb")
            self._writer = wds.TarWriter(self._stream)
            self.shards.append(name)
            self.counts.append(0)
            self._bytes = 0
        self._bytes += self._writer.write(sample)
        self.counts[-1] += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            name = self.shards[-1]
            os.replace(self.out / f"{name}.tmp", self.out / name)
            self._writer = None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            (self.out / f"{self.shards[-1]}.tmp").unlink(missing_ok=True)
            self.shards.pop()
            self.counts.pop()
            self._writer = None


def brace_pattern(names: list[str]) -> str | None:
    """``['train-000000.tar', 'train-000001.tar']`` -> ``'train-{000000..000001}.tar'``."""
    if not names:
        return None
    if len(names) == 1:
        return names[0]
    prefix = names[0].rsplit("-", 1)[0]
    return f"{prefix}-{{{names[0].rsplit('-', 1)[1][:6]}..{names[-1].rsplit('-', 1)[1][:6]}}}.tar"


def assign_splits(ids: list[str], val_fraction: float) -> dict[str, str]:
    """Deterministic split per source id, independent of order: the ``round(n * val_fraction)`` ids (at least one
    when ``val_fraction > 0`` and there are two or more sources) with the smallest hash go to ``val``.

    Splitting by source, not by clip, keeps clips of one recording out of both splits.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(ids) * val_fraction)
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    ranked = sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())
    val = set(ranked[:n_val])
    return {i: ("val" if i in val else "train") for i in ids}


def _sample(clip: Clip) -> dict[str, Any]:
    return {
        "__key__": clip.key,
        "mp4": encode_mp4(clip.video, clip.fps),
        "wav": encode_wav(clip.audio, clip.sample_rate),
        "json": json.dumps(clip.meta).encode(),
    }


def write_shards(
    sources: Iterable[Source],
    out: str | Path,
    summary: ShardSummary,
    *,
    val_fraction: float = 0.1,
    max_clips_per_shard: int = 1000,
    max_shard_bytes: int = 500_000_000,
    overwrite: bool = False,
    progress: bool = True,
) -> ShardSummary:
    """Write every clip of every source into split shards under ``out`` and finish with ``index.json``.

    A source whose clips cannot be made (unreadable, no audio track, too short) is recorded in
    ``summary.skipped`` and the run goes on. Clips whose rates or size differ from ``summary`` are an error in
    the source code, not in the data, and stop the run (after removing the unfinished shard).
    """
    out = Path(out)
    sources = list(sources)
    summary.sources = len(sources)
    split_of = assign_splits([s.id for s in sources], val_fraction)
    _prepare_output(out, overwrite)
    writers = {split: _AtomicShards(out, split, max_clips_per_shard, max_shard_bytes) for split in SPLITS}
    clips_written = dict.fromkeys(SPLITS, 0)
    bar = tqdm(sources, desc=f"shards -> {out}", unit="src", disable=not progress, mininterval=1.0)
    try:
        for source in bar:
            try:
                clips = source.clips()
            except Exception as exc:  # a bad input file must not end a long run
                summary.skipped.append({"source": source.id, "reason": f"{type(exc).__name__}: {exc}"})
                bar.set_postfix(clips=sum(clips_written.values()), skipped=len(summary.skipped), refresh=False)
                continue
            split = split_of[source.id]
            for clip in clips:
                _check_clip(clip, summary)
                writers[split].write(_sample(clip))
                clips_written[split] += 1
            bar.set_postfix(clips=sum(clips_written.values()), skipped=len(summary.skipped), refresh=False)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        bar.close()
    for writer in writers.values():
        writer.close()
    if sum(clips_written.values()) == 0:
        reasons = "; ".join(f"{s['source']}: {s['reason']}" for s in summary.skipped[:5])
        raise ValueError(f"no clip could be made from {len(sources)} sources ({reasons})")
    summary.splits = {
        split: {
            "clips": clips_written[split],
            "shards": writers[split].shards,
            "counts": writers[split].counts,
            "pattern": brace_pattern(writers[split].shards),
        }
        for split in SPLITS
    }
    tmp = out / f"{INDEX_NAME}.tmp"
    tmp.write_text(json.dumps(summary.to_json(), indent=1))
    os.replace(tmp, out / INDEX_NAME)
    return summary


def _prepare_output(out: Path, overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    existing = [p for p in out.iterdir() if p.name == INDEX_NAME or re.fullmatch(r"(train|val)-\d{6}\.tar(\.tmp)?", p.name)]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds shards ({len(existing)} files, e.g. {existing[0].name}); pass --overwrite to replace them")
    for path in existing:
        path.unlink()


def _check_clip(clip: Clip, summary: ShardSummary) -> None:
    expected = (summary.frames_per_clip, summary.height, summary.width)
    if (clip.fps, clip.sample_rate) != (summary.fps, summary.sample_rate) or clip.video.shape[:3] != expected:
        raise ValueError(
            f"clip {clip.key} is {clip.video.shape[:3]} at {clip.fps} fps / {clip.sample_rate} Hz, but the index "
            f"promises {expected} at {summary.fps} fps / {summary.sample_rate} Hz"
        )
