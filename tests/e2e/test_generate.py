"""`lightning-mf generate` on a tiny checkpoint: exact lengths, determinism, long streams, timings and bad inputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import av
import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_mf.cli import run
from lightning_mf.data.media import decode_mp4, decode_wav, read_media
from lightning_mf.lit import JointTraining, UniModalPretraining
from lightning_mf.models import TowerConfig
from lightning_mf.spec import AVSpec
from lightning_mf.tools.generate import _training_chunks, first_frame_l1, load_first_frame, words_near

TOWER = TowerConfig(dim=32, depth=2, heads=2, vocab_size=32)
WORDS = [
    {"token": "HH", "start": 0.1, "end": 0.2},
    {"token": "AH", "start": 0.2, "end": 0.45},
    {"token": "OW", "start": 2.1, "end": 2.5},  # beyond the training window: seen by the later chunks only
]


def _save(model: L.LightningModule, path: Path) -> Path:
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model gains nothing from more threads, and on a busy machine intra-op threads contend for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny joint checkpoint, a 48x40 first frame (cropped and resized to 32x32) and a transcript."""
    root = tmp_path_factory.mktemp("generate")
    torch.manual_seed(0)
    ckpt = _save(JointTraining(spec=AVSpec(), tower=TOWER), root / "joint.ckpt")
    image = torch.zeros(3, 40, 48, dtype=torch.uint8)
    image[0, :, :4] = image[0, :, -4:] = 255  # red side bands, cropped away by the centre crop to 40x40
    image[2, :, 4:-4] = 200  # blue centre
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / "face.png")
    (root / "words.json").write_text(json.dumps(WORDS))
    return {"ckpt": ckpt, "frame": root / "face.png", "words": root / "words.json", "root": root}


def _generate(inputs: dict[str, Path], out: Path, *extra: str) -> dict[str, float]:
    args = ["generate", "--ckpt", str(inputs["ckpt"]), "--first-frame", str(inputs["frame"])]
    return run(args + ["--transcript", str(inputs["words"]), "--out", str(out), *extra])


def test_generate_writes_mp4_and_wav_of_exactly_the_duration(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "new" / "clip.mp4"  # the parent folder is created
    result = _generate(inputs, out, "--duration", "1.3", "--mode", "few2")
    frames = decode_mp4(out.read_bytes())
    assert frames.shape == (21, 32, 32, 3)  # round(1.3 * 16) frames, from 11 streamed chunks of 2
    audio, rate = decode_wav(out.with_suffix(".wav").read_bytes())
    assert rate == 16000 and audio.shape == (21 * 1000,)  # the audio ends with the video, to the sample
    with av.open(str(out)) as container:  # the mp4's AAC track: the same span, padded to whole 1024-sample frames
        track = container.streams.audio[0]
        assert abs(float(track.duration * track.time_base) * 16000 - 21000) < 1024
    muxed = read_media(out, fps=16, sample_rate=16000, size=(32, 32)).audio
    assert 21000 <= muxed.shape[0] < 21000 + 1024 and np.abs(muxed[:21000] - audio).mean() < 0.05
    assert result["frames"] == 21 and result["audio_samples"] == 21000 and result["duration_s"] == 21 / 16
    assert result["chunks"] == 11 and result["nfe_per_chunk"] == 2 and result["cache_nfe_per_chunk"] == 1
    assert result["fps"] > 0 and 0 < result["ttfc_s"] < result["stream_s"] and result["decode_s"] > 0
    first = load_first_frame(str(inputs["frame"]), AVSpec())
    written = torch.from_numpy(frames).permute(0, 3, 1, 2)[None]  # (1, T, 3, H, W) as decoded from the mp4
    assert abs(result["first_frame_l1"] - first_frame_l1(written, first)) < 2.0  # the mp4's lossy coding moves it a little
    printed = capsys.readouterr().out
    assert f"mean |frame - first frame| {result['first_frame_l1']:.1f}" in printed
    wav = out.with_suffix(".wav")
    assert all(word in printed for word in ("FPS", "TTFC", "NFE/chunk 2 (+1 cache write)", "few2", str(out), str(wav)))


def test_same_seed_gives_the_same_clip_and_another_seed_differs(inputs: dict[str, Path], tmp_path: Path) -> None:
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        _generate(inputs, tmp_path / f"{name}.mp4", "--duration", "0.5", "--mode", "few2", "--seed", seed)
    wav = {name: (tmp_path / f"{name}.wav").read_bytes() for name in "abc"}
    video = {name: decode_mp4((tmp_path / f"{name}.mp4").read_bytes()) for name in "abc"}
    assert wav["a"] == wav["b"] and np.array_equal(video["a"], video["b"])
    assert wav["a"] != wav["c"] and not np.array_equal(video["a"], video["c"])


def test_a_stream_longer_than_the_training_window_keeps_its_length(inputs: dict[str, Path], tmp_path: Path) -> None:
    result = _generate(inputs, tmp_path / "long.mp4", "--duration", "3.0", "--window", "2", "--mode", "few1")
    assert result["chunks"] == 24 and result["frames"] == 48  # 6x the 4-chunk training windows, cache of 2 chunks
    assert decode_mp4((tmp_path / "long.mp4").read_bytes()).shape == (48, 32, 32, 3)
    assert decode_wav((tmp_path / "long.wav").read_bytes())[0].shape == (48000,)


def test_multi_mode_counts_cfg_twice(inputs: dict[str, Path], tmp_path: Path) -> None:
    quick = ("--duration", "0.125")  # one chunk
    guided = _generate(inputs, tmp_path / "m.mp4", *quick, "--mode", "multi3", "--cfg-scale", "2.0")
    assert (guided["nfe_per_chunk"], guided["cache_nfe_per_chunk"]) == (6, 2)  # the unconditional branch has its own cache
    assert _generate(inputs, tmp_path / "h.mp4", *quick, "--mode", "multi2heun")["nfe_per_chunk"] == 2 * (2 + 1)
    unguided = _generate(inputs, tmp_path / "n.mp4", *quick, "--mode", "multi3", "--cfg-scale", "1")
    assert (unguided["nfe_per_chunk"], unguided["cache_nfe_per_chunk"]) == (3, 1)


def test_each_chunk_sees_the_words_near_it() -> None:
    words = [{"token": t, "start": s, "end": s + 0.1} for t, s in (("a", 0.0), ("b", 0.4), ("c", 0.9), ("d", 1.6))]

    def tokens(end: float) -> list[str]:
        return [w["token"] for w in words_near(words, end, span=0.5)]

    assert tokens(0.125) == tokens(0.5) == ["a", "b"]  # the first window sees its whole transcript, as in training
    assert tokens(1.0) == ["b", "c"] and tokens(2.0) == ["d"] and tokens(3.0) == []  # then a sliding window
    assert words_near(words, 2.0, 0.5)[0]["start"] == 1.6  # times stay absolute


def test_text_span_defaults_to_the_recorded_training_window(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _training_chunks(str(inputs["ckpt"])) == 4  # not recorded: 4 chunks
    checkpoint = torch.load(inputs["ckpt"], weights_only=False)
    checkpoint["datamodule_hyper_parameters"] = {"root": "data/tiny", "window_chunks": 8}  # as `fit` records it
    torch.save(checkpoint, tmp_path / "fit.ckpt")
    assert _training_chunks(str(tmp_path / "fit.ckpt")) == 8
    run(["generate", "--ckpt", str(tmp_path / "fit.ckpt"), "--first-frame", str(inputs["frame"]), "--duration", "0.25",
         "--out", str(tmp_path / "x.mp4")])  # fmt: skip
    assert "each chunk sees 1 s" in capsys.readouterr().out  # 8 chunks of 0.125 s


def test_first_frame_is_centre_cropped_and_resized(inputs: dict[str, Path]) -> None:
    frame = load_first_frame(str(inputs["frame"]), AVSpec())
    assert frame.shape == (1, 3, 32, 32) and frame.dtype == torch.uint8
    assert frame[0, 0].max() == 0 and frame[0, 2].min() == 200  # the red side bands were cropped away


def test_single_tower_models_write_what_they_have(inputs: dict[str, Path], tmp_path: Path) -> None:
    for modality in ("audio", "video"):
        model = UniModalPretraining(modality=modality, spec=AVSpec(), tower=TOWER)
        ckpt = _save(model, tmp_path / f"{modality}.ckpt")
        frame = [] if modality == "audio" else ["--first-frame", str(inputs["frame"])]
        out = str(tmp_path / f"{modality}.mp4")
        assert run(["generate", "--ckpt", str(ckpt), *frame, "--duration", "0.5", "--out", out])["frames"] == 8
    assert not (tmp_path / "audio.mp4").exists()  # audio only: a wav
    assert decode_wav((tmp_path / "audio.wav").read_bytes())[0].shape == (8000,)
    assert not (tmp_path / "video.wav").exists()  # video only: an mp4 without an audio track
    assert decode_mp4((tmp_path / "video.mp4").read_bytes()).shape == (8, 32, 32, 3)
    with av.open(str(tmp_path / "video.mp4")) as container:
        assert not container.streams.audio


def test_bad_inputs_name_their_option(inputs: dict[str, Path], tmp_path: Path) -> None:
    ckpt, frame = str(inputs["ckpt"]), str(inputs["frame"])
    base = ["generate", "--ckpt", ckpt, "--first-frame", frame, "--out", str(tmp_path / "x.mp4")]
    with pytest.raises(FileNotFoundError, match="--ckpt .*missing.ckpt does not exist"):
        run(["generate", "--ckpt", str(tmp_path / "missing.ckpt"), "--first-frame", frame])
    with pytest.raises(FileNotFoundError, match="--first-frame .*missing.png does not exist"):
        run(["generate", "--ckpt", ckpt, "--first-frame", str(tmp_path / "missing.png")])
    with pytest.raises(FileNotFoundError, match="--transcript .*missing.json does not exist"):
        run(base + ["--transcript", str(tmp_path / "missing.json")])
    with pytest.raises(ValueError, match="--first-frame is required"):
        run(["generate", "--ckpt", ckpt, "--out", str(tmp_path / "x.mp4")])
    (tmp_path / "not_an_image.png").write_text("hello")
    with pytest.raises(ValueError, match="--first-frame .*not_an_image.png is not a readable image"):
        run(["generate", "--ckpt", ckpt, "--first-frame", str(tmp_path / "not_an_image.png")])
    for duration in ("0", "-1", "0.01"):  # 0.01 s is less than half a frame at 16 fps
        with pytest.raises(ValueError, match="--duration"):
            run(base + ["--duration", duration])
    with pytest.raises(ValueError, match="--mode 'few4heun'"):
        run(base + ["--mode", "few4heun"])
    bad = {
        "lacks end": [{"token": "a", "start": 0.0}],
        "ends before it starts": [{"token": "a", "start": 0.0, "end": 0.1}, {"token": "b", "start": 0.5, "end": 0.2}],
        "negative time": [{"token": "a", "start": -0.1, "end": 0.1}],
        "must be numbers": [{"token": "a", "start": "0", "end": 0.1}],
        "must hold a JSON list": {"token": "a", "start": 0.0, "end": 0.1},
    }
    for i, (message, content) in enumerate(bad.items()):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=f"--transcript .*bad{i}.json.*{message}"):
            run(base + ["--transcript", str(path)])
    (tmp_path / "broken.json").write_text('[{"token": "a",')
    with pytest.raises(ValueError, match="--transcript .*broken.json is not valid JSON"):
        run(base + ["--transcript", str(tmp_path / "broken.json")])
    with pytest.raises(ValueError, match='entry 1 {"token": "b", "start": 0.5, "end": 0.2}'):  # the bad entry, shown
        run(base + ["--transcript", str(tmp_path / "bad1.json")])


def test_first_frame_l1_is_the_mean_absolute_level_difference_per_clip_frame_and_pixel() -> None:
    first = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    first[1] = 200
    video = first[:, None].repeat(1, 3, 1, 1, 1)  # (2, 3 frames, 3, 4, 4): the character held still
    assert first_frame_l1(video, first) == 0.0
    video[0, 1] = 30  # one frame of one clip 30 levels off everywhere; uint8 must not wrap around below 0
    video[1, 2, :, :2] = 100  # half of a frame of the other clip 100 levels below its first frame
    assert first_frame_l1(video, first) == pytest.approx((30 + 50) / 6)
