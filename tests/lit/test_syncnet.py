"""The in-repo SyncNet: per-frame unit-norm embeddings, user weights, and a training step that learns.

Whether a briefly trained SyncNet recovers offsets reliably is not asserted here: on the tiny preset 600 steps gave
the right offsets for one seed and off-by-one for another (see the closing note of the metrics work). LipSync's own
mechanics are tested with a ground-truth embedder in tests/metrics.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_mf.data.synthetic import PRESETS, synthesize_clip
from lightning_mf.lit import SyncNetTraining
from lightning_mf.models.syncnet import SyncNet
from lightning_mf.objectives.contrastive import sync_contrastive_loss

SPEC = PRESETS["tiny"].spec


def _delay(audio: torch.Tensor, frames: int) -> torch.Tensor:
    shift, out = frames * SPEC.samples_per_frame, torch.zeros_like(audio)
    if shift >= 0:
        out[:, shift:] = audio[:, : audio.shape[1] - shift]
    else:
        out[:, :shift] = audio[:, -shift:]
    return out


def test_syncnet_loads_user_weights_and_checkpoints(tmp_path: Path) -> None:
    net = SyncNet(SPEC)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    clip = torch.randint(0, 255, (1, 6, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(SyncNet(SPEC, weights=str(tmp_path / "weights.pt")).embed_video(clip), net.embed_video(clip))
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "lit.ckpt")
    assert torch.equal(SyncNet(SPEC, weights=str(tmp_path / "lit.ckpt")).embed_video(clip), net.embed_video(clip))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SyncNet(SPEC, weights=str(tmp_path / "nope.pt"))
    torch.save({"video.0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not match SyncNet: missing keys"):
        SyncNet(SPEC, weights=str(tmp_path / "bad.pt"))


def test_embeddings_are_per_frame_and_unit_norm() -> None:
    net = SyncNet(SPEC)
    v = net.embed_video(torch.randint(0, 255, (2, 7, 3, 32, 32), dtype=torch.uint8))
    a = net.embed_audio(torch.randn(2, 7 * SPEC.samples_per_frame) * 0.1)
    assert v.shape == a.shape == (2, 7, 64)
    assert torch.allclose(v.norm(dim=-1), torch.ones(2, 7), atol=1e-5)


def test_a_syncnet_training_step_lowers_the_contrastive_loss() -> None:
    torch.manual_seed(0)
    clips = [synthesize_clip(seed, SPEC, 1.0) for seed in range(4)]
    video = torch.from_numpy(np.stack([c.video for c in clips])).permute(0, 1, 4, 2, 3)
    audio = torch.from_numpy(np.stack([c.audio for c in clips]))
    module = SyncNetTraining(SPEC)
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(100):  # one fixed batch: the loss must fall
        loss, _ = sync_contrastive_loss(module.net.embed_video(video), module.net.embed_audio(audio), module.max_shift, module.temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]  # measured: 2.34 -> 1.92 in 100 steps
