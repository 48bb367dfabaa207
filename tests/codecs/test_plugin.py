"""Codecs plugged in by import path (`model.codec.video`), as a pretrained VAE would be: the model trains and
generates through them, checkpoints rebuild them, and a class that is not a codec is refused by name."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import RotatedPatchCodec

from lightning_mf.codecs import PatchCodec
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.lit import JointTraining
from lightning_mf.lit.base import CodecConfig, SamplerConfig
from lightning_mf.models import TowerConfig
from lightning_mf.sequence import AVSequencer
from lightning_mf.spec import AVSpec

SPEC = AVSpec()
TOWER = TowerConfig(dim=128, depth=1, heads=2, vocab_size=32)
PLUGGED = CodecConfig(patch=4, video="helpers.RotatedPatchCodec", video_args={"patch": 4, "tubelet": 2, "seed": 3})


def _video(frames: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (2, frames, 3, SPEC.height, SPEC.width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_a_plugged_codec_replaces_the_patch_codec_and_round_trips_media() -> None:
    seq = AVSequencer(SPEC, ("video", "audio"), video="helpers.RotatedPatchCodec", video_args={"patch": 4, "seed": 3})
    codec = seq.codecs["video"]
    assert isinstance(codec, RotatedPatchCodec) and isinstance(seq.codecs["audio"], torch.nn.Module)
    video = _video()
    tokens = codec.encode(video)
    plain = PatchCodec(SPEC, patch=4, tubelet=2).encode(video)
    assert tokens.shape == plain.shape and not torch.allclose(tokens, plain)  # really another token space
    assert torch.equal(seq.decode({"video": tokens})["video"], video)  # through the sequencer's uint8 conversion
    prefix = seq.prefix(video[:, 0])["video"]
    assert torch.allclose(prefix.x, codec.encode(video[:, :1].expand(-1, 2, -1, -1, -1)))


def test_a_model_with_a_plugged_codec_trains_generates_and_reloads(tiny_shards: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = JointTraining(spec=SPEC, tower=TOWER, codec=PLUGGED)
    assert [type(m).__name__ for m in model.seq.codecs.values()] == ["RotatedPatchCodec", "MelCodec"]
    optimizer = model.configure_optimizers()["optimizer"]
    assert all(p is not model.seq.codecs["video"].rotation for g in optimizer.param_groups for p in g["params"])
    dm = AVDataModule(root=str(tiny_shards), spec=SPEC, window_chunks=2, batch_size=2, batches_per_epoch=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    loss = model.flow_matching(batch).loss()
    loss.backward()
    grads = [p.grad for p in model.net.towers["video"].parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and sum(g.abs().sum() for g in grads) > 0
    media = model.generate(batch, num_chunks=2, sampler=SamplerConfig(mode="few", steps=1))
    assert media["video"].shape == (2, 4, 3, 32, 32) and media["video"].dtype == torch.uint8

    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "plugged.ckpt")
    loaded = JointTraining.load_from_checkpoint(tmp_path / "plugged.ckpt", weights_only=False)
    assert loaded.codec_config == PLUGGED
    assert torch.equal(loaded.seq.codecs["video"].rotation, model.seq.codecs["video"].rotation)
    with pytest.raises(ValueError, match="was trained with codec="):  # a stage started from it must use the same codec
        JointTraining(spec=SPEC, tower=TOWER, codec=CodecConfig(patch=4)).check_shapes(loaded.hparams, "the checkpoint")


def test_codecs_that_do_not_fit_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"model.codec.video=nowhere.Codec: cannot import it"):
        AVSequencer(SPEC, ("video",), video="nowhere.Codec")
    with pytest.raises(ValueError, match="full import path"):
        AVSequencer(SPEC, ("video",), video="Codec")
    with pytest.raises(TypeError, match=r"model.codec.audio=builtins.str built a str, not an nn.Module"):
        AVSequencer(SPEC, ("audio",), audio="builtins.str")
    with pytest.raises(TypeError, match=r"lacks \['tubelet'\]"):
        AVSequencer(SPEC, ("video",), video="lightning_mf.codecs.MelCodec")
