"""Fréchet distances: the maths against SciPy, exact accumulation, and that the default feature networks rank
held-out real data closer to real data than blurred / noisy / frozen video and noisy / low-passed audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torchaudio.functional as AF
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.transforms.functional import gaussian_blur

from lightning_mf.data.synthetic import PRESETS, synthesize_clip
from lightning_mf.metrics.frechet import (
    AudioFeatures,
    ClipFeatures,
    FrameFeatures,
    FrechetDistance,
    MotionFeatures,
    frechet_distance,
)

NUM_SEEDS = 24  # per side: real vs held-out real


def _random_gaussian(rng: np.random.Generator, dim: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal((dim, 2 * dim))
    return rng.standard_normal(dim), a @ a.T / (2 * dim) + 0.01 * np.eye(dim)


def _scipy_fd(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("dim", [1, 3, 16, 64])
def test_frechet_distance_matches_scipy(dim: int) -> None:
    rng = np.random.default_rng(dim)
    (mu1, s1), (mu2, s2) = _random_gaussian(rng, dim), _random_gaussian(rng, dim)
    got = frechet_distance(*(torch.from_numpy(t) for t in (mu1, s1, mu2, s2)))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_scipy_fd(mu1, s1, mu2, s2), rel=1e-6)
    assert frechet_distance(*(torch.from_numpy(t) for t in (mu1, s1, mu1, s1))).item() == pytest.approx(0, abs=1e-9)


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(4))


def test_metric_accumulates_exactly_and_measures_a_mean_shift() -> None:
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=gen) @ torch.randn(8, 8, generator=gen)  # (N, F) correlated
    fake = torch.randn(200, 8, generator=gen) * 1.5 + 0.3

    one_shot = FrechetDistance(num_features=8)
    one_shot.update(real, real=True)
    one_shot.update(fake, real=False)
    batched = FrechetDistance(num_features=8)
    for chunk in real.split(37):
        batched.update(chunk, real=True)
    for chunk in fake.split(23):
        batched.update(chunk, real=False)
    expected = frechet_distance(
        real.double().mean(0), torch.from_numpy(np.cov(real.double().numpy(), rowvar=False)),
        fake.double().mean(0), torch.from_numpy(np.cov(fake.double().numpy(), rowvar=False)),
    )  # fmt: skip
    assert one_shot.compute().item() == pytest.approx(expected.item(), rel=1e-9)
    assert batched.compute().item() == pytest.approx(expected.item(), rel=1e-9)

    same = FrechetDistance(num_features=8)
    same.update(real, real=True)
    same.update(real, real=False)
    assert same.compute().item() == pytest.approx(0, abs=1e-8)

    v = torch.tensor([1.0, -2.0, 0.5, 0, 0, 3.0, 0, 0.25])
    shifted = FrechetDistance(num_features=8)
    shifted.update(real, real=True)
    shifted.update(real + v, real=False)  # same covariance, mean moved by v
    assert shifted.compute().item() == pytest.approx(v.square().sum().item(), rel=1e-6)


def test_metric_errors_name_the_problem() -> None:
    metric = FrechetDistance(num_features=4)
    metric.update(torch.randn(5, 4), real=True)
    metric.update(torch.randn(1, 4), real=False)
    with pytest.raises(ValueError, match="at least 2 fake samples"):
        metric.compute()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        metric.update(torch.randn(5, 3), real=True)
    with pytest.raises(ValueError, match="num_features"):
        FrechetDistance(torch.nn.Identity())


def test_frame_features_agree_with_torchmetrics_fid() -> None:
    """FrameFeatures also plugs into torchmetrics' FID (custom feature module, uint8 input): same number."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (80, 3, 16, 16), dtype=torch.uint8, generator=gen)
    b = (a.float() * 0.7 + 40).to(torch.uint8)
    ours, theirs = FrechetDistance(FrameFeatures(width=4)), FrechetInceptionDistance(feature=FrameFeatures(width=4))
    for metric in (ours, theirs):
        metric.update(a, real=True)
        metric.update(b, real=False)
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), rel=1e-3)
    assert ours.compute().item() > 0.1


# --- real synthetic data: held-out real must be closer than any degradation --------------------------------------


@pytest.fixture(scope="module")
def real_and_held_out() -> dict[str, Tensor]:
    spec = PRESETS["tiny"].spec
    out = {}
    for name, seeds in (("real", range(NUM_SEEDS)), ("held", range(NUM_SEEDS, 2 * NUM_SEEDS))):
        clips = [synthesize_clip(s, spec, 2.0) for s in seeds]
        video = np.stack([c.video for c in clips])  # (B, T, H, W, 3) uint8
        out[f"{name}_video"] = torch.from_numpy(video).permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W)
        out[f"{name}_audio"] = torch.from_numpy(np.stack([c.audio for c in clips]))  # (B, S)
    return out


def _blur(video: Tensor) -> Tensor:
    blurred = gaussian_blur(video.flatten(0, 1).float(), [5, 5], [1.5, 1.5])
    return blurred.round().clamp(0, 255).to(torch.uint8).view(video.shape)


def _noise(video: Tensor) -> Tensor:
    noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(1)) * 20
    return (video.float() + noise).round().clamp(0, 255).to(torch.uint8)


def _frozen(video: Tensor) -> Tensor:
    return video[:, :1].expand_as(video).contiguous()


def _distances(feature: torch.nn.Module, real: Tensor, others: dict[str, Tensor]) -> dict[str, float]:
    """FD of ``real`` to each of ``others``, extracting the real features once."""
    with torch.no_grad():
        real_feats = feature.eval()(real)
    out = {}
    for name, x in others.items():
        metric = FrechetDistance(num_features=feature.num_features)
        metric.update(real_feats, real=True)
        with torch.no_grad():
            metric.update(feature(x), real=False)
        out[name] = metric.compute().item()
    return out


def _windows(video: Tensor, length: int = 8) -> Tensor:
    """(B, T, 3, H, W) -> (B T / length, length, 3, H, W): more clip samples from the same data."""
    return video.reshape(-1, length, *video.shape[2:])


def test_frame_features_rank_blur_and_noise_below_held_out(real_and_held_out: dict[str, Tensor]) -> None:
    real, held = real_and_held_out["real_video"][:, ::4], real_and_held_out["held_video"][:, ::4]  # 8 frames a clip
    fd = _distances(
        FrameFeatures(), real.flatten(0, 1), {k: f(held).flatten(0, 1) for k, f in
                                              (("held", lambda v: v), ("blur", _blur), ("noise", _noise))}
    )
    assert fd["held"] < 0.5 * min(fd["blur"], fd["noise"]), fd


def test_clip_features_catch_frozen_video(real_and_held_out: dict[str, Tensor]) -> None:
    real, held = real_and_held_out["real_video"], real_and_held_out["held_video"]
    degrade = {"held": lambda v: v, "blur": _blur, "noise": _noise, "frozen": _frozen}
    others = {k: _windows(f(held)) for k, f in degrade.items()}
    fd = _distances(ClipFeatures(), _windows(real), others)
    assert fd["held"] < 0.2 * min(fd["blur"], fd["noise"], fd["frozen"]), fd


def test_motion_features_cannot_be_won_by_copying_the_first_frame(real_and_held_out: dict[str, Tensor]) -> None:
    """The static generator (the conditioning frame repeated) that FD frames rates as well as real data: FD motion
    puts it far below held-out real windows."""
    real, held = _windows(real_and_held_out["real_video"]), _windows(real_and_held_out["held_video"])
    static = held[:, :1].expand_as(held)
    fd = _distances(MotionFeatures(), real, {"held": held, "static": static, "noise": _noise(held)})
    assert fd["held"] < 0.1 * min(fd["static"], fd["noise"]), fd
    frames = _distances(FrameFeatures(), real.flatten(0, 1), {"held": held.flatten(0, 1), "static": static.flatten(0, 1)})
    assert frames["static"] < 3 * frames["held"], frames  # the blind spot this metric covers


def test_audio_features_rank_noise_and_lowpass_below_held_out(real_and_held_out: dict[str, Tensor]) -> None:
    real, held = real_and_held_out["real_audio"], real_and_held_out["held_audio"]  # (B, S)
    noisy = held + 0.02 * torch.randn(held.shape, generator=torch.Generator().manual_seed(2))
    lowpassed = AF.lowpass_biquad(held, PRESETS["tiny"].spec.sample_rate, 1000.0)
    quarters = lambda a: a.reshape(a.shape[0] * 4, -1)  # noqa: E731  0.5 s windows
    fd = _distances(AudioFeatures(), quarters(real), {"held": quarters(held), "noise": quarters(noisy),
                                                      "lowpass": quarters(lowpassed)})
    assert fd["held"] < 0.2 * min(fd["noise"], fd["lowpass"]), fd


# --- user weights ---------------------------------------------------------------------------------------------------


def _inputs(cls: type) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    if cls is FrameFeatures:
        return torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=gen)
    if cls in (ClipFeatures, MotionFeatures):
        return torch.randint(0, 256, (2, 3, 3, 16, 16), dtype=torch.uint8, generator=gen)
    return torch.randn(2, 4000, generator=gen) * 0.1


@pytest.mark.parametrize("cls", [FrameFeatures, ClipFeatures, MotionFeatures, AudioFeatures])
def test_user_weights_round_trip(cls: type, tmp_path: Path) -> None:
    x = _inputs(cls)
    torch.manual_seed(123)  # the default weights ignore the global RNG
    assert torch.equal(cls()(x), cls()(x))
    trained = cls(seed=7)
    torch.save(trained.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    for name in ("plain.pt", "ckpt.pt"):
        loaded = cls(weights=str(tmp_path / name))
        assert torch.equal(loaded(x), trained(x))
    assert not torch.allclose(cls()(x), trained(x))


def test_user_weights_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        FrameFeatures(weights=str(tmp_path / "nope.pt"))
    torch.save(AudioFeatures().state_dict(), tmp_path / "audio.pt")
    with pytest.raises(ValueError, match=r"does not match FrameFeatures: missing keys \['convs"):
        FrameFeatures(weights=str(tmp_path / "audio.pt"))
    torch.save(FrameFeatures(width=8).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match=r"shape mismatches \['convs.0.bias'"):
        FrameFeatures(weights=str(tmp_path / "narrow.pt"))
