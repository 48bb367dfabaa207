"""AVDataModule: aligned audio-video windows from WebDataset shards, checked against the run's AVSpec."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader
from webdataset.shardlists import expand_urls

from lightning_mf.batch import AVBatch
from lightning_mf.data.pipeline import ClipStream
from lightning_mf.data.shards import read_index
from lightning_mf.spec import AVSpec

__all__ = ["AVDataModule", "ResumableLoader"]

log = logging.getLogger(__name__)


class ResumableLoader(DataLoader):
    """A DataLoader over a training :class:`ClipStream` that Lightning can checkpoint (it is ``_Stateful``).

    Its state is the epoch and the batches of that epoch the training loop has *consumed* (counted by
    :meth:`AVDataModule.on_before_batch_transfer`, not by what the prefetching fetcher pulled). On load, the stream
    replays the epoch's random draws and drops those batches, so ``fit --ckpt_path`` continues with exactly the data
    an uninterrupted run would have seen.
    """

    def __init__(self, stream: ClipStream, **kwargs: Any) -> None:
        super().__init__(stream, batch_size=None, **kwargs)
        self.epochs_started, self.consumed = 0, 0

    def __iter__(self) -> Any:
        self.epochs_started += 1
        self.consumed = 0
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epochs_started, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed >= len(self):  # saved at the end of an epoch: the next one starts afresh
            self.epochs_started = self.dataset.epoch = epoch
        else:  # re-enter the interrupted epoch and drop what was consumed of it
            self.epochs_started = self.dataset.epoch = epoch - 1
            self.dataset.skip_batches = consumed


class AVDataModule(L.LightningDataModule):
    """Paired audio-video windows of ``window_chunks`` chunks from the shards under ``root``.

    Training resamples shards forever (``resampled`` in webdataset terms) and cuts the stream into epochs of
    ``batches_per_epoch``, so every rank sees the same number of batches on any number of nodes; validation
    reads each clip exactly once, split by rank and then by worker. The shards' ``index.json`` is checked
    against ``spec`` in ``setup``, before any compute.

    Args:
        root: folder holding ``index.json`` and the shards (``lightning-mf shards`` writes it).
        spec: rates, frame size and chunk length; linked to the model's spec by the CLI.
        window_chunks: chunks per training and validation window.
        batch_size: windows per batch and per rank.
        val_batch_size: windows per validation batch (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        shuffle_buffer: training samples held in the shuffle buffer.
        batches_per_epoch: training batches per epoch and rank (default: train clips / (batch_size * world size)).
        seed: base seed of shard choice, shuffle and window positions (derived per rank, worker and epoch).
        train_urls: shard urls or brace pattern overriding the index's train shards (e.g. ``pipe:`` commands);
            relative paths are taken relative to ``root``.
        val_urls: the same for validation.
        pin_memory: pin batches in page-locked memory (for GPU training).
    """

    def __init__(
        self,
        root: str = "data/tiny",
        spec: AVSpec = AVSpec(),
        window_chunks: int = 4,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle_buffer: int = 256,
        batches_per_epoch: int | None = None,
        seed: int = 0,
        train_urls: str | list[str] | None = None,
        val_urls: str | list[str] | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("window_chunks", window_chunks), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"data.{name} must be at least 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.root, self.spec = Path(root), spec
        self.window_chunks, self.batch_size = window_chunks, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.shuffle_buffer, self.seed = num_workers, shuffle_buffer, seed
        self.batches_per_epoch, self.pin_memory = batches_per_epoch, pin_memory
        self._url_overrides = {"train": train_urls, "val": val_urls}
        self.index: dict[str, Any] | None = None
        self._streams: dict[str, ClipStream] = {}
        self._logged: dict[str, int] = {}
        self._train_loader: ResumableLoader | None = None

    @property
    def window_frames(self) -> int:
        return self.window_chunks * self.spec.frames_per_chunk

    def setup(self, stage: str | None = None) -> None:
        """Read and check the index, then build the streams (cheap: nothing is read from the shards here)."""
        self.index = index = read_index(self.root)
        self._check_index(index)
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        train_urls, val_urls = self.urls("train"), self.urls("val")
        if stage in (None, "fit") and train_urls:
            per_epoch = self.batches_per_epoch or max(1, index["splits"]["train"]["clips"] // (self.batch_size * world))
            self._streams["train"] = ClipStream(
                train_urls, self.spec, self.window_frames, self.batch_size, train=True, rank=rank, world_size=world,
                seed=self.seed, shuffle_buffer=self.shuffle_buffer, batches_per_epoch=per_epoch, num_workers=self.num_workers,
            )
        if val_urls:
            if len(val_urls) < world:  # a rank without shards runs fewer validation steps than the others
                log.warning(
                    "%d validation shards for %d ranks: some ranks will validate on nothing; write more, smaller "
                    "val shards (`lightning-mf shards ... --max-clips-per-shard`)", len(val_urls), world,
                )
            self._streams["val"] = ClipStream(
                val_urls, self.spec, self.window_frames, self.val_batch_size, train=False, rank=rank, world_size=world,
                seed=self.seed, num_workers=self.num_workers,
            )

    def urls(self, split: str) -> list[str]:
        """The shard urls of ``split``: the override if given, else the index's shards under ``root``."""
        override = self._url_overrides[split]
        if override is not None:
            patterns = [override] if isinstance(override, str) else list(override)
            expanded = [url for pattern in patterns for url in expand_urls(pattern)]
            return [url if "://" in url or url.startswith(("pipe:", "/")) else str(self.root / url) for url in expanded]
        assert self.index is not None, "call setup() first"
        return [str(self.root / name) for name in self.index["splits"].get(split, {}).get("shards", [])]

    def _check_index(self, index: dict[str, Any]) -> None:
        spec, where = self.spec, self.root / "index.json"
        for field, have in (("fps", index["fps"]), ("sample_rate", index["sample_rate"]), ("height", index["height"]), ("width", index["width"])):
            want = getattr(spec, field)
            if have != want:
                raise ValueError(
                    f"data.spec.{field}={want} but the shards in {self.root} were written with {field}={have} "
                    f"({where}); set data.spec.{field}: {have} or rewrite the shards at {field}={want}"
                )
        frames = index["frames_per_clip"]
        if frames % spec.frames_per_chunk:
            divisors = [d for d in range(1, frames + 1) if frames % d == 0]
            near = sorted(divisors, key=lambda d: abs(d - spec.frames_per_chunk))[:3]
            raise ValueError(
                f"data.spec.frames_per_chunk={spec.frames_per_chunk} does not divide the {frames}-frame clips in "
                f"{self.root}, so a whole clip is not a whole number of chunks; use one of {sorted(near)}"
            )
        if self.window_frames > index["frames_per_clip"]:
            fit = index["frames_per_clip"] // spec.frames_per_chunk
            raise ValueError(
                f"data.window_chunks={self.window_chunks} ({self.window_frames} frames) is longer than the clips in "
                f"{self.root} ({index['frames_per_clip']} frames); use data.window_chunks <= {fit}"
            )
        if not index["splits"].get("train", {}).get("clips") and self._url_overrides["train"] is None:
            raise ValueError(f"{where} lists no training clips")

    def _loader(self, split: str) -> DataLoader:
        if split not in self._streams:
            raise RuntimeError(f"no {split} shards in {self.root} (index lists none and no data.{split}_urls given)")
        kind = ResumableLoader if split == "train" else partial(DataLoader, batch_size=None)
        loader = kind(
            self._streams[split], num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
        )
        if split == "train":
            self._train_loader = loader
        return loader

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """The held-out split (shards have train and val only)."""
        return self._loader("val")

    def predict_dataloader(self) -> DataLoader:
        """Held-out windows: their first frames and transcripts condition generation."""
        return self._loader("val")

    @property
    def skipped(self) -> dict[str, int]:
        """Corrupt samples and unreadable shards passed over so far on this rank, by split and kind."""
        totals: dict[str, int] = {}
        for stream in self._streams.values():
            totals.update(stream.skips.totals())
        return totals

    def on_before_batch_transfer(self, batch: AVBatch, dataloader_idx: int) -> AVBatch:
        """Count the training batches the loop consumed (the resume position); log the skip counters whenever
        they grow."""
        if self.trainer is not None and self.trainer.training and self._train_loader is not None:
            self._train_loader.consumed += 1
        self._log_skips()
        return batch

    def teardown(self, stage: str) -> None:
        self._log_skips()
        bad = {k: v for k, v in self.skipped.items() if v}
        if bad:
            log.warning("data skipped on this rank: %s (see warnings above for which samples and shards)", bad)

    def _log_skips(self) -> None:
        current = self.skipped
        changed = {f"data/skipped_{k.replace('/', '_')}": v for k, v in current.items() if self._logged.get(k) != v}
        if changed and self.trainer is not None:
            for logger in self.trainer.loggers:
                logger.log_metrics(changed, step=self.trainer.global_step)
        self._logged = current
