import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from lightning_mf.data.clip import Clip
from lightning_mf.data.media import decode_mp4, decode_wav, encode_mp4, encode_wav
from lightning_mf.data.shards import INDEX_NAME, Source, assign_splits, folder_sources, read_index, write_shards
from lightning_mf.tools import shards as shards_tool

from helpers import TINY_CLIPS, tiny_summary


def _read_all(out: Path) -> dict[str, dict]:
    urls = sorted(str(p) for p in out.glob("*.tar"))
    return {s["__key__"]: s for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())}


def test_round_trip_frames_exact_audio_within_one_lsb_meta_intact(tiny_shards: Path, tiny_clips: dict[str, Clip]) -> None:
    samples = _read_all(tiny_shards)
    assert set(samples) == set(tiny_clips)
    for key, clip in tiny_clips.items():
        sample = samples[key]
        assert np.array_equal(decode_mp4(sample["mp4"]), clip.video)
        audio, rate = decode_wav(sample["wav"])
        assert rate == clip.sample_rate and audio.shape == clip.audio.shape
        assert np.abs(audio - clip.audio).max() <= 1 / 32767
        assert json.loads(sample["json"]) == json.loads(json.dumps(clip.meta))


def test_index_describes_the_shards(tiny_shards: Path) -> None:
    index = read_index(tiny_shards)
    assert (index["fps"], index["sample_rate"], index["height"], index["width"]) == (16, 16000, 32, 32)
    assert (index["clip_seconds"], index["frames_per_clip"], index["samples_per_clip"]) == (2.0, 32, 32000)
    train, val = index["splits"]["train"], index["splits"]["val"]
    assert (train["clips"], val["clips"]) == (8, 4)
    assert train["shards"] == [f"train-{i:06d}.tar" for i in range(4)] and train["pattern"] == "train-{000000..000003}.tar"
    assert val["counts"] == [2, 2] and index["sources"] == TINY_CLIPS and index["skipped"] == []
    for split in (train, val):
        for name, count in zip(split["shards"], split["counts"]):
            with tarfile.open(tiny_shards / name) as tar:
                assert len(tar.getnames()) == 3 * count  # mp4, wav, json per clip
    assert not list(tiny_shards.glob("*.tmp"))


def test_split_assignment_is_deterministic_and_order_free() -> None:
    ids = [f"clip{i}" for i in range(20)]
    a, b = assign_splits(ids, 0.2), assign_splits(ids[::-1], 0.2)
    assert a == b and sum(v == "val" for v in a.values()) == 4
    assert sum(v == "val" for v in assign_splits(ids[:3], 0.1).values()) == 1  # at least one held out
    with pytest.raises(ValueError, match="val_fraction"):
        assign_splits(ids, 1.0)


def _clip(i: int) -> Clip:
    return Clip(key=f"c{i}", video=np.full((32, 32, 32, 3), i, np.uint8), audio=np.zeros(32000, np.float32), fps=16, sample_rate=16000)


def test_interrupted_run_leaves_no_partial_shard_and_no_index(tmp_path: Path) -> None:
    def boom() -> list[Clip]:
        raise KeyboardInterrupt

    sources = [Source(f"s{i}", (lambda i=i: [_clip(i)])) for i in range(5)] + [Source("s5", boom)]
    with pytest.raises(KeyboardInterrupt):
        write_shards(sources, tmp_path, tiny_summary(), val_fraction=0.0, max_clips_per_shard=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar", "train-000001.tar"]  # whole shards only
    with pytest.raises(FileNotFoundError, match="no index.json.*interrupted"):
        read_index(tmp_path)


def test_existing_shards_are_kept_unless_overwrite(tmp_path: Path) -> None:
    sources = [Source(f"s{i}", (lambda i=i: [_clip(i)])) for i in range(6)]
    write_shards(sources, tmp_path, tiny_summary(), val_fraction=0.0, max_clips_per_shard=2, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_shards(sources[:2], tmp_path, tiny_summary(), val_fraction=0.0, progress=False)
    write_shards(sources[:2], tmp_path, tiny_summary(), val_fraction=0.0, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000000.tar"]  # stale shards removed


def test_clip_with_wrong_size_is_a_clear_error(tmp_path: Path) -> None:
    bad = Clip(key="big", video=np.zeros((32, 64, 64, 3), np.uint8), audio=np.zeros(32000, np.float32), fps=16, sample_rate=16000)
    with pytest.raises(ValueError, match=r"clip big is \(32, 64, 64\).*index promises \(32, 32, 32\)"):
        write_shards([Source("a", lambda: [bad])], tmp_path, tiny_summary(), val_fraction=0.0, progress=False)
    assert not list(tmp_path.glob("*.tar*"))


def _talking_file(path: Path, seconds: float, fps: int = 25, rate: int = 22050, audio_track: bool = True) -> None:
    n = round(seconds * fps)
    frames = np.random.default_rng(0).integers(0, 256, (n, 48, 64, 3), dtype=np.uint8)
    t = np.arange(round(seconds * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    if audio_track:
        encode_mp4(frames, fps, audio=audio, sample_rate=rate, target=path)
    else:
        encode_mp4(frames, fps, target=path)


def test_folder_source_cuts_resampled_clips_and_skips_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    (src / "speaker1").mkdir(parents=True)
    _talking_file(src / "speaker1" / "talk.mp4", 5.3)  # 25 fps, 22.05 kHz, 48x64 -> two 2 s clips
    (src / "speaker1" / "talk.json").write_text(json.dumps([{"token": "hi", "start": 0.5, "end": 0.9}, {"token": "there", "start": 2.1, "end": 2.6}]))
    _talking_file(src / "paired.mp4", 4.2, audio_track=False)  # audio comes from paired.wav at 44.1 kHz
    (src / "paired.wav").write_bytes(encode_wav(np.zeros(round(4.2 * 44100), np.float32), 44100))
    _talking_file(src / "silent.mp4", 3.0, audio_track=False)
    _talking_file(src / "short.mp4", 1.0)
    (src / "broken.mp4").write_bytes(b"definitely not an mp4" * 100)

    out = tmp_path / "out"
    summary = shards_tool.folder(src=str(src), out=str(out), fps=16, sample_rate=16000, size=32, clip_seconds=2.0, val_fraction=0.0)
    printed = capsys.readouterr().out
    assert {s["source"] for s in summary.skipped} == {"silent.mp4", "short.mp4", "broken.mp4"}
    reasons = {s["source"]: s["reason"] for s in summary.skipped}
    assert "no audio track" in reasons["silent.mp4"] and "too short" in reasons["short.mp4"]
    assert "skipped 3 of 5 sources" in printed and "broken.mp4" in printed

    samples = _read_all(out)
    assert sorted(samples) == ["paired-00000000", "paired-00002000", "speaker1_talk-00000000", "speaker1_talk-00002000"]
    for sample in samples.values():
        assert decode_mp4(sample["mp4"]).shape == (32, 32, 32, 3)
        assert decode_wav(sample["wav"])[0].shape == (32000,)
    second = json.loads(samples["speaker1_talk-00002000"]["json"])
    assert (second["start"], second["end"], second["source"]) == (2.0, 4.0, "speaker1/talk.mp4")
    assert [e["token"] for e in second["transcript"]] == ["there"] and second["transcript"][0]["start"] == pytest.approx(0.1)
    assert read_index(out)["skipped"] == summary.skipped


def test_folder_source_bad_input_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_sources(tmp_path / "nope", fps=16, sample_rate=16000, size=(32, 32), clip_seconds=2.0)
    with pytest.raises(FileNotFoundError, match=r"holds no \*\.mp4"):
        folder_sources(tmp_path, fps=16, sample_rate=16000, size=(32, 32), clip_seconds=2.0)
    (tmp_path / "a.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a multiple of fps"):
        folder_sources(tmp_path, fps=24, sample_rate=16000, size=(32, 32), clip_seconds=2.0)


def test_all_sources_failing_is_an_error_not_an_empty_dataset(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "broken.mp4").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no clip could be made from 1 sources.*broken.mp4"):
        shards_tool.folder(src=str(tmp_path / "src"), out=str(tmp_path / "out"))
    assert not (tmp_path / "out" / INDEX_NAME).exists()
