"""GenerationEval inside a real fit: scalars, a video (GIF image) and an audio entry that TensorBoard reads back."""

from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_mf.callbacks import GenerationEval
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.lit import JointTraining
from lightning_mf.lit.base import SamplerConfig
from lightning_mf.models import TowerConfig
from lightning_mf.spec import AVSpec


def test_generation_eval_logs_scalars_video_and_audio(tiny_shards: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = AVSpec()
    model = JointTraining(spec=spec, tower=TowerConfig(dim=32, depth=1, heads=2, vocab_size=32))
    dm = AVDataModule(root=str(tiny_shards), spec=spec, window_chunks=4, batch_size=2, batches_per_epoch=2)
    callback = GenerationEval(every_n_steps=2, num_clips=2, modes={"multi2": SamplerConfig(steps=2, cfg_scale=2.0)}, vowel_classifier_clips=8, bootstraps=20)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="eval", version="")
    trainer = L.Trainer(max_steps=2, logger=logger, callbacks=[callback], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(model, datamodule=dm)

    expected = {
        "fd_frames", "fd_clips", "fd_motion", "fd_audio", "drift_mean", "drift_w2", "oracle_sync_corr", "oracle_sync_lag",
        "video_timing_r", "video_timing_r_ci95", "audio_timing_r", "fd_motion_ci95", "vowel_error_rate", "speech_frame_error",
    }
    assert {f"eval/{name}_multi2" for name in expected} <= set(callback.last)
    assert all(v == v and abs(v) < float("inf") for v in callback.last.values())  # finite
    signed = ("eval/oracle", "eval/video_timing_r_", "eval/audio_timing_r_", "eval/video_timing_lag", "eval/audio_timing_lag")
    assert all(v >= 0 for k, v in callback.last.items() if not k.startswith(signed))  # distances, rates, intervals
    events = EventAccumulator(str(tmp_path / "eval"), size_guidance={"scalars": 0, "images": 0, "audio": 0}).Reload()
    assert "eval/fd_frames_multi2" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("eval/fd_frames_multi2")] == [2]  # step 2, and not again at fit end
    last = callback.last  # the floors and ceilings, from the next 2 held-out windows
    assert last["eval/video_timing_r_real"] > 0.9 and last["eval/audio_timing_r_real"] > 0.9
    assert last["eval/fd_motion_copy_first_frame"] > 3 * last["eval/fd_motion_real"]
    assert last["eval/drift_mean_real_other_characters"] > 10 * last["eval/drift_mean_real"]
    gif = events.Images("eval/video_multi2")[-1]
    assert gif.encoded_image_string[:6] == b"GIF89a" and (gif.width, gif.height) == (32, 32)  # 8 frames, animated
    audio = events.Audio("eval/audio_multi2")[-1]
    assert audio.sample_rate == 16000 and audio.length_frames == 8 * 1000


@pytest.mark.slow  # Inception and R(2+1)D on CPU: 20 s
def test_pretrained_feature_networks_add_their_frechet_distances(tiny_shards: Path, tmp_path: Path) -> None:
    """A user's Inception / video-net weights add fd_inception / fd_<arch>; windows too short for a network fail
    when the callback is prepared (at fit start), naming the network."""
    import torchvision

    from lightning_mf.callbacks.generation_eval import take_windows

    torch.manual_seed(0)
    paths = {
        "inception": torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False),
        "r2plus1d_18": torchvision.models.video.r2plus1d_18(weights=None),
        "s3d": torchvision.models.video.s3d(weights=None),
    }
    for name, net in paths.items():
        torch.save(net.state_dict(), tmp_path / f"{name}.pt")
    spec = AVSpec()
    model = JointTraining(spec=spec, tower=TowerConfig(dim=32, depth=1, heads=2, vocab_size=32))
    dm = AVDataModule(root=str(tiny_shards), spec=spec, window_chunks=2, batch_size=2)  # 4 frames: Inception is slow on CPU
    dm.setup("validate")
    conditions, other = take_windows(dm.val_dataloader(), 2), take_windows(dm.val_dataloader(), 2, skip=2)
    weights = {name: str(tmp_path / f"{name}.pt") for name in ("inception", "r2plus1d_18")}
    callback = GenerationEval(num_clips=2, vowel_classifier_clips=0, pretrained=weights, bootstraps=0)
    callback.prepare(model, conditions)
    same = callback.scorer.score({"video": conditions.video, "audio": conditions.audio}, made_from=conditions, reference=conditions)
    different = callback.scorer.score({"video": other.video, "audio": other.audio}, made_from=conditions, reference=conditions)
    for key in ("fd_inception", "fd_r2plus1d_18"):
        assert same[key] < 1e-6 * max(1.0, different[key]) and different[key] > 0, key  # identical sets: distance 0
    with pytest.raises(ValueError, match="pretrained 's3d' needs windows of at least 13 frames, the evaluation windows have 4 frames"):
        GenerationEval(num_clips=2, vowel_classifier_clips=0, pretrained={"s3d": str(tmp_path / "s3d.pt")}).prepare(model, conditions)
    with pytest.raises(ValueError, match=r"pretrained networks \['i3d'\] are unknown"):
        GenerationEval(pretrained={"i3d": "x.pt"})
