import logging
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import webdataset as wds

from lightning_mf.batch import AVBatch
from lightning_mf.data.clip import Clip
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.data.pipeline import cut_window
from lightning_mf.data.shards import read_index
from lightning_mf.spec import AVSpec


def _datamodule(root: Path, **kwargs) -> AVDataModule:
    dm = AVDataModule(root=str(root), **kwargs)
    dm.setup("fit")
    return dm


def test_training_windows_are_aligned_crops_of_the_clips(tiny_shards: Path, tiny_clips: dict[str, Clip], tiny_spec: AVSpec) -> None:
    dm = _datamodule(tiny_shards, spec=tiny_spec, window_chunks=3, batch_size=4, batches_per_epoch=4, seed=3)
    spf, starts = tiny_spec.samples_per_frame, set()
    for batch in dm.train_dataloader():
        assert isinstance(batch, AVBatch) and batch.size == 4
        assert batch.video.shape == (4, 6, 3, 32, 32) and batch.video.dtype == torch.uint8
        assert batch.audio.shape == (4, 6 * spf) and batch.audio.dtype == torch.float32
        for i, key in enumerate(batch.keys):
            clip, start = tiny_clips[key], int(batch.start_frame[i])
            starts.add(start)
            # video frame `start` and audio sample `start * samples_per_frame` open the window, exactly
            assert np.array_equal(batch.video[i].permute(0, 2, 3, 1).numpy(), clip.video[start : start + 6])
            assert np.abs(batch.audio[i].numpy() - clip.audio[start * spf : (start + 6) * spf]).max() <= 1 / 32767
            truth = batch.meta[i]["ground_truth"]["mouth_open"]
            assert truth == clip.meta["ground_truth"]["mouth_open"][start : start + 6]
    assert len(starts) > 3  # windows really are random


def test_cut_window_maps_frame_index_to_sample_index(tiny_spec: AVSpec) -> None:
    frames, spf = 20, tiny_spec.samples_per_frame
    video = torch.arange(frames, dtype=torch.uint8).view(frames, 1, 1, 1).expand(frames, 3, 4, 4)
    audio = torch.arange(frames * spf, dtype=torch.float32)
    meta = {"num_frames": frames, "transcript": [{"token": "a", "start": 0.30, "end": 0.55}, {"token": "o", "start": 0.9, "end": 1.1}]}
    for start in (0, 5, 11, 14):
        window = cut_window("k", video, audio, meta, tiny_spec, start, 6)
        assert int(window.video[0, 0, 0, 0]) == start and int(window.audio[0]) == start * spf
        assert window.audio.shape[0] == 6 * spf and int(window.audio[-1]) == (start + 6) * spf - 1
    window = cut_window("k", video, audio, meta, tiny_spec, 5, 6)  # 0.3125 s .. 0.6875 s
    assert window.meta["transcript"] == [{"token": "a", "start": 0.0, "end": pytest.approx(0.2375)}]


def test_training_epoch_has_the_configured_length_and_is_seeded(tiny_shards: Path, tiny_spec: AVSpec) -> None:
    dm = _datamodule(tiny_shards, spec=tiny_spec, batch_size=2, batches_per_epoch=5, seed=1)
    loader = dm.train_dataloader()
    assert len(loader) == 5 and len(list(loader)) == 5
    first = [(b.keys, b.start_frame.tolist()) for b in _datamodule(tiny_shards, spec=tiny_spec, batch_size=2, batches_per_epoch=3, seed=1).train_dataloader()]
    again = [(b.keys, b.start_frame.tolist()) for b in _datamodule(tiny_shards, spec=tiny_spec, batch_size=2, batches_per_epoch=3, seed=1).train_dataloader()]
    other = [(b.keys, b.start_frame.tolist()) for b in _datamodule(tiny_shards, spec=tiny_spec, batch_size=2, batches_per_epoch=3, seed=2).train_dataloader()]
    assert first == again and first != other


def test_default_epoch_covers_the_training_clips_once(tiny_shards: Path, tiny_spec: AVSpec) -> None:
    dm = _datamodule(tiny_shards, spec=tiny_spec, batch_size=4)
    assert len(dm.train_dataloader()) == 8 // 4


def test_two_workers_see_each_validation_clip_exactly_once(tiny_shards: Path, tiny_spec: AVSpec) -> None:
    dm = _datamodule(tiny_shards, spec=tiny_spec, batch_size=3, num_workers=2)
    keys = [key for batch in dm.val_dataloader() for key in batch.keys]
    assert sorted(keys) == sorted(read_val_keys(tiny_shards)) and len(keys) == 4
    assert all(int(s) == 0 for batch in dm.val_dataloader() for s in batch.start_frame)


def read_val_keys(root: Path) -> list[str]:
    urls = [str(root / name) for name in read_index(root)["splits"]["val"]["shards"]]
    return [s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())]


def test_validation_shards_split_across_ranks_without_overlap(tiny_shards: Path, tiny_spec: AVSpec) -> None:
    seen = []
    for rank in (0, 1):
        dm = AVDataModule(root=str(tiny_shards), spec=tiny_spec, batch_size=8)
        dm.trainer = type("T", (), {"global_rank": rank, "world_size": 2})()  # what setup reads from the Trainer
        dm.setup("validate")
        seen.append([k for b in dm.val_dataloader() for k in b.keys])
    assert len(seen[0]) == len(seen[1]) == 2 and not set(seen[0]) & set(seen[1])


@pytest.fixture()
def damaged_shards(tiny_shards: Path, tmp_path: Path) -> tuple[Path, set[str]]:
    """The tiny val split as three shards: intact, one garbage sample, truncated inside its second sample's mp4."""
    root = tmp_path / "damaged"
    shutil.copytree(tiny_shards, root)
    train_urls = [str(root / n) for n in read_index(root)["splits"]["train"]["shards"]]
    samples = list(wds.DataPipeline(wds.SimpleShardList(train_urls), wds.tarfile_to_samples()))[:7]
    clean = lambda s: {k: v for k, v in s.items() if k in ("__key__", "mp4", "wav", "json")}  # noqa: E731
    with wds.TarWriter(str(root / "bad-000000.tar")) as sink:
        for s in samples[:2]:
            sink.write(clean(s))
    with wds.TarWriter(str(root / "bad-000001.tar")) as sink:
        sink.write(clean(samples[2]))
        sink.write({**clean(samples[3]), "mp4": b"\x00garbage" * 50})
        sink.write(clean(samples[4]))
    with wds.TarWriter(str(root / "bad-000002.tar")) as sink:
        sink.write(clean(samples[5]))
        sink.write(clean(samples[6]))
    data = (root / "bad-000002.tar").read_bytes()
    cut = data.index(samples[6]["mp4"][:64]) + 100  # inside the mp4 member of the second sample
    (root / "bad-000002.tar").write_bytes(data[:cut])
    good = {samples[i]["__key__"] for i in (0, 1, 2, 4, 5)}
    return root, good


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_sample_and_truncated_shard_are_skipped_and_counted(damaged_shards, tiny_spec: AVSpec, caplog, workers: int) -> None:
    root, good = damaged_shards
    dm = _datamodule(root, spec=tiny_spec, batch_size=2, val_urls="bad-{000000..000002}.tar", num_workers=workers)
    with caplog.at_level(logging.WARNING, logger="lightning_mf.data.pipeline"):
        keys = [k for batch in dm.val_dataloader() for k in batch.keys]
    assert sorted(keys) == sorted(good)  # iteration completed, every intact clip seen once
    # one garbage sample; the truncated tar is one shard error, and the half sample it left (json only) one more sample;
    # with worker processes the counts of all workers add up in the main process
    assert dm.skipped["val/samples"] == 2 and dm.skipped["val/shards"] == 1
    if workers == 0:  # worker processes log on their own
        assert sum("skipped sample" in r.message for r in caplog.records) == 2
        assert sum("skipped shard" in r.message for r in caplog.records) == 1


class _Consumer(L.LightningModule):
    """The smallest module that eats AVBatch (the real ones come with the model issue)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def training_step(self, batch: AVBatch, batch_idx: int) -> torch.Tensor:
        return (self.scale * batch.audio).pow(2).mean() + (self.scale * batch.video.float() / 255).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_logs_the_skip_counter(damaged_shards, tiny_spec: AVSpec, tmp_path: Path) -> None:
    root, _ = damaged_shards
    dm = AVDataModule(root=str(root), spec=tiny_spec, batch_size=2, batches_per_epoch=6, train_urls="bad-{000000..000002}.tar", shuffle_buffer=1)
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = L.Trainer(max_steps=6, logger=logger, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(_Consumer(), datamodule=dm)
    assert dm.skipped["train/samples"] >= 1 and dm.skipped["train/shards"] >= 1
    logged = (Path(logger.log_dir) / "metrics.csv").read_text()
    assert "data/skipped_train_samples" in logged and "data/skipped_train_shards" in logged


def test_setup_checks_the_index_against_the_config(tiny_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data.spec.fps=25 but the shards .* fps=16"):
        _datamodule(tiny_shards, spec=AVSpec(fps=25, mel_hop=160))
    with pytest.raises(ValueError, match=r"data.spec.height=64 .* height=32"):
        _datamodule(tiny_shards, spec=AVSpec(height=64, width=64))
    with pytest.raises(ValueError, match=r"data.spec.frames_per_chunk=3 does not divide the 32-frame clips .*\[1, 2, 4\]"):
        _datamodule(tiny_shards, spec=AVSpec(frames_per_chunk=3))
    with pytest.raises(ValueError, match=r"data.window_chunks=17 \(34 frames\) is longer than the clips .*<= 16"):
        _datamodule(tiny_shards, window_chunks=17)
    with pytest.raises(FileNotFoundError, match="does not exist.*lightning-mf shards"):
        _datamodule(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no index.json"):
        _datamodule(tmp_path / "empty")
    with pytest.raises(ValueError, match="data.batch_size must be at least 1"):
        AVDataModule(batch_size=0)


def test_training_on_data_that_is_all_bad_fails_loudly_instead_of_hanging(tiny_shards: Path, tiny_spec: AVSpec, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(tiny_shards, root)
    (root / "junk-000000.tar").write_bytes(b"not a tar at all" * 64)
    dm = _datamodule(root, spec=tiny_spec, batch_size=2, train_urls="junk-000000.tar")
    with pytest.raises(RuntimeError, match=r"train data: the last 100 samples/shards all failed .*junk-000000.tar"):
        next(iter(dm.train_dataloader()))
