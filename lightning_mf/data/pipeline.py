"""The WebDataset stream behind :class:`~lightning_mf.data.datamodule.AVDataModule`.

shard urls -> (train: resampled forever | val: split by rank, then by worker) -> tar members -> samples
-> (train: shuffle buffer) -> decode + length checks -> aligned window -> batches of :class:`AVBatch`.

Rank and world size are passed in explicitly rather than read from the environment: Lightning's launcher sets
``WORLD_SIZE`` but not ``RANK``, and webdataset's own splitters then treat every process as rank 0 (ECOSYSTEM §0.10).
Corrupt samples and unreadable shards are skipped with a warning and counted (:class:`SkipLog`).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from lightning_mf.batch import AVBatch, AVWindow
from lightning_mf.data.media import decode_mp4, decode_wav
from lightning_mf.spec import AVSpec

__all__ = ["ClipStream", "SkipLog", "cut_window", "decode_sample", "sample_meta"]

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 100  # skips in a row, with no good window between, before the stream gives up


class SkipLog:
    """Counts what a stream passed over and warns about the first ones.

    Counts live in a shared-memory tensor with one row per DataLoader worker (each worker writes only its own
    row), so the main process reads exact totals at any time, including skips after a worker's last batch.
    """

    KINDS = ("samples", "shards")

    def __init__(self, split: str, num_workers: int, warn_first: int = 20, warn_every: int = 1000) -> None:
        self.split, self.warn_first, self.warn_every = split, warn_first, warn_every
        self.counts = torch.zeros(max(1, num_workers), len(self.KINDS), dtype=torch.long).share_memory_()
        self.consecutive = 0  # per process: reset by every good sample

    def record(self, kind: str, what: str, exc: BaseException) -> None:
        """Count and maybe warn; raise once MAX_CONSECUTIVE_FAILURES skips came without a good sample between
        (a training stream resamples forever, so a data set that is all bad would otherwise hang silently)."""
        self.consecutive += 1
        if self.consecutive >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(
                f"{self.split} data: the last {self.consecutive} samples/shards all failed (last: {what}: "
                f"{type(exc).__name__}: {exc}); check the shard urls and rewrite the shards"
            ) from exc
        row = self.counts[_worker().index]
        row[self.KINDS.index(kind)] += 1
        n = int(row[self.KINDS.index(kind)])
        if n <= self.warn_first or n % self.warn_every == 0:
            log.warning("skipped %s %s (%s: %s); %d %s skipped so far by this %s worker", kind[:-1], what, type(exc).__name__, exc, n, kind, self.split)

    def totals(self) -> dict[str, int]:
        """``{"train/samples": n, "train/shards": m}``, summed over workers."""
        summed = self.counts.sum(0).tolist()
        return {f"{self.split}/{kind}": int(n) for kind, n in zip(self.KINDS, summed)}


def sample_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """The parsed ``json`` of a raw sample, after checking that all three media keys are there."""
    missing = {"mp4", "wav", "json"} - sample.keys()
    if missing:
        raise ValueError(f"sample has no {', '.join(sorted(missing))}")
    return json.loads(sample["json"])


def decode_sample(sample: dict[str, Any], meta: dict[str, Any], spec: AVSpec, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """mp4/wav bytes -> video (T, 3, H, W) uint8 and audio (T * spf,) float32, checked against ``meta``.

    With ``stop``, only frames ``[0, stop)`` are decoded (and audio is cut to match): a window needs no more.
    """
    num_frames = int(meta["num_frames"])
    audio, rate = decode_wav(sample["wav"])
    if rate != spec.sample_rate:
        raise ValueError(f"audio is at {rate} Hz, spec wants {spec.sample_rate}")
    if audio.shape[0] != num_frames * spec.samples_per_frame:
        raise ValueError(f"json says {num_frames} frames but wav has {audio.shape[0]} samples (expected {num_frames * spec.samples_per_frame})")
    wanted = num_frames if stop is None else min(stop, num_frames)
    frames = decode_mp4(sample["mp4"], stop=wanted)  # (T, H, W, 3)
    if frames.shape[0] != wanted:
        raise ValueError(f"mp4 has {frames.shape[0]} frames, json says {num_frames}")
    if frames.shape[1:3] != (spec.height, spec.width):
        raise ValueError(f"frames are {frames.shape[1]}x{frames.shape[2]}, spec wants {spec.height}x{spec.width}")
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W)
    return video, torch.from_numpy(audio[: wanted * spec.samples_per_frame])


def cut_window(key: str, video: torch.Tensor, audio: torch.Tensor, meta: dict[str, Any], spec: AVSpec, start: int, frames: int) -> AVWindow:
    """The window of ``frames`` frames from ``start``; audio starts at exactly ``start * samples_per_frame``.

    ``video``/``audio`` may stop at the window's end; per-frame ground-truth lists span ``meta["num_frames"]``.
    """
    spf = spec.samples_per_frame
    t0, t1 = start / spec.fps, (start + frames) / spec.fps
    window_meta: dict[str, Any] = {
        "key": key,
        "source": meta.get("source", ""),
        "start": float(meta.get("start", 0.0)) + t0,
        "transcript": [
            {"token": e["token"], "start": max(e["start"], t0) - t0, "end": min(e["end"], t1) - t0}
            for e in meta.get("transcript", [])
            if e["end"] > t0 and e["start"] < t1
        ],
    }
    truth = meta.get("ground_truth")
    if truth is not None:
        window_meta["ground_truth"] = {
            name: (values[start : start + frames] if isinstance(values, list) and len(values) == meta["num_frames"] else values)
            for name, values in truth.items()
            if name != "blinks"
        }
        window_meta["ground_truth"]["blinks"] = [[max(a, t0) - t0, min(b, t1) - t0] for a, b in truth.get("blinks", []) if b > t0 and a < t1]
    return AVWindow(key=key, video=video[start : start + frames], audio=audio[start * spf : (start + frames) * spf], start_frame=start, meta=window_meta)


@dataclass
class _Worker:
    index: int
    count: int


def _worker() -> _Worker:
    info = get_worker_info()
    return _Worker(0, 1) if info is None else _Worker(info.id, info.num_workers)


class ClipStream(IterableDataset):
    """Batches of aligned windows from WebDataset shards.

    Args:
        urls: shard paths or urls (anything webdataset opens, e.g. ``pipe:`` commands).
        spec: rates and frame size every sample must have.
        window_frames: frames per window.
        batch_size: windows per batch.
        train: resample shards forever with random windows and a shuffle buffer, cut into epochs of
            ``batches_per_epoch``; otherwise read each clip once, window at frame 0, last batch may be short.
        rank, world_size: this process's place in the job (for splitting validation shards and seeding).
        seed: base seed; each (rank, worker, epoch) draws from its own stream derived from it.
        shuffle_buffer: samples held in the shuffle buffer (train).
        batches_per_epoch: batches this rank yields per epoch across all its workers (train).
        num_workers: DataLoader workers that will run this stream (sizes the skip counters).
    """

    def __init__(
        self,
        urls: list[str],
        spec: AVSpec,
        window_frames: int,
        batch_size: int,
        *,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 256,
        batches_per_epoch: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("ClipStream needs at least one shard url")
        if train and not batches_per_epoch:
            raise ValueError("a training stream needs batches_per_epoch")
        self.urls, self.spec, self.window_frames, self.batch_size = list(urls), spec, window_frames, batch_size
        self.train, self.rank, self.world_size, self.seed = train, rank, world_size, seed
        self.shuffle_buffer, self.batches_per_epoch = shuffle_buffer, batches_per_epoch
        self.num_workers = num_workers
        self.skips = SkipLog("train" if train else "val", num_workers)
        self.epoch = 0
        self.skip_batches = 0  # batches of the coming epoch this rank consumed before a resume (train)
        self._reading: tuple[int, str] | None = None  # (serial, url) of the shard being read in this process
        self._failed: tuple[int, str] | None = None

    def _shards(self, rng: random.Random, worker: _Worker) -> Iterator[dict[str, str]]:
        if self.train:  # every rank/worker samples shards with replacement from its own stream
            urls: Iterator[str] = (rng.choice(self.urls) for _ in itertools.count())
        else:
            urls = iter(self.urls[self.rank :: self.world_size][worker.index :: worker.count])
        for serial, url in enumerate(urls):
            self._reading = (serial, url)  # shards are read one after another, so errors belong to this one
            yield {"url": url}

    def _shard_error(self, exc: BaseException) -> bool:
        """webdataset handler for errors opening or reading a tar: count each failed shard read once, go on."""
        if self._reading != self._failed:  # a broken tar raises once per member loop and once more per file
            self._failed = self._reading
            self.skips.record("shards", self._reading[1] if self._reading else "?", exc)
        return True

    def _windows(self, samples: Iterator[dict[str, Any]], rng: random.Random) -> Iterator[AVWindow]:
        for sample in samples:
            try:
                meta = sample_meta(sample)
                num_frames = int(meta["num_frames"])
                if num_frames < self.window_frames:
                    raise ValueError(f"clip has {num_frames} frames, fewer than the {self.window_frames}-frame window")
                start = rng.randrange(num_frames - self.window_frames + 1) if self.train else 0
                video, audio = decode_sample(sample, meta, self.spec, stop=start + self.window_frames)
            except Exception as exc:
                self.skips.record("samples", f"{sample.get('__key__', '?')} in {sample.get('__url__', '?')}", exc)
                continue
            self.skips.consecutive = 0
            yield cut_window(sample["__key__"], video, audio, meta, self.spec, start, self.window_frames)

    def __iter__(self) -> Iterator[AVBatch]:
        worker = _worker()
        self.epoch += 1  # persists across epochs in the main process and in persistent workers
        rng = random.Random(f"{self.seed}:{self.rank}:{worker.index}:{self.epoch}")
        samples = wds.tarfile_to_samples(handler=self._shard_error)(self._shards(rng, worker))  # curried filters
        if self.train and self.shuffle_buffer > 1:
            samples = wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 64), rng=rng)(samples)
        windows = self._windows(iter(samples), rng)
        if worker.count > self.skips.counts.shape[0]:
            raise RuntimeError(f"ClipStream was built for {self.num_workers} workers but runs in {worker.count}")
        limit = self.batches_per_worker if self.train else None
        # after a resume, replay (and drop) this worker's share of the batches consumed before it: the DataLoader
        # takes batches from its workers in turn, so worker w had produced batches w, w + W, ... of the epoch
        skip, self.skip_batches = len(range(worker.index, self.skip_batches, worker.count)), 0
        for count in itertools.count():
            if limit is not None and count >= limit:
                return
            group = list(itertools.islice(windows, self.batch_size))
            if not group or (self.train and len(group) < self.batch_size):
                return
            if count >= skip:
                yield AVBatch.collate(group)

    @property
    def batches_per_worker(self) -> int:
        """Training batches each worker yields per epoch (the epoch is split evenly between workers)."""
        return math.ceil(self.batches_per_epoch / max(1, self.num_workers)) if self.batches_per_epoch else 0

    def __len__(self) -> int:
        """Batches per epoch on this rank (training only: lets Lightning show a progress-bar total)."""
        if not self.train:
            raise TypeError("a validation ClipStream has no length: it reads its shards once")
        return self.batches_per_worker * max(1, self.num_workers)
