"""Pretrained feature networks, with random weights saved the way the real files are: each loads through its
torchvision / torchvggish-layout state dict and matches the reference network fed with preprocessing written here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import inception_v3, video

from lightning_mf.metrics.frechet import FrechetDistance
from lightning_mf.metrics.pretrained import InceptionFeatures, VGGishFeatures, VideoNetFeatures

KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)


def _resize(frames: Tensor, size: int) -> Tensor:
    """(N, 3, H, W) float in [0, 1] -> (N, 3, size, size), as the classes are documented to resize."""
    return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _close(got: Tensor, want: Tensor, tol: float = 1e-5) -> bool:
    return torch.allclose(got, want, rtol=tol, atol=tol * want.abs().max().item())


@pytest.fixture(scope="module")
def inception(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=True, init_weights=False)  # torchvision's file has AuxLogits
    # default-initialised Inception's pool features are ~1e-7 and ignore the input: one train-mode batch sets
    # batch-norm statistics (a cumulative average) that keep them well scaled and input-dependent
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        net.train()(torch.rand(2, 3, 299, 299) * 2 - 1)
    path = tmp_path_factory.mktemp("inception") / "inception_v3.pth"
    torch.save(net.state_dict(), path)
    net.fc = nn.Identity()
    return path, net.eval()


def test_inception_matches_torchvision(inception: tuple[Path, nn.Module]) -> None:
    path, net = inception
    model = InceptionFeatures(str(path))
    frames = torch.randint(0, 256, (2, 3, 320, 352), dtype=torch.uint8)
    got = model(frames)
    assert got.shape == (2, 2048) and model.num_features == 2048
    # ImageNet normalisation + torchvision's transform_input is the (x - 0.5) / 0.5 scaling of the Google weights
    with torch.no_grad():
        want = net(_resize(frames.float() / 255, 299) * 2 - 1)
    assert _close(got, want)
    assert _close(model(frames[:1].float() / 255), got[:1])


def test_video_r2plus1d_matches_torchvision(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = video.r2plus1d_18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r2plus1d.pth")
    net.fc = nn.Identity()
    model = VideoNetFeatures(str(tmp_path / "r2plus1d.pth"))
    clips = torch.rand(2, 2, 3, 64, 80)  # (B, T, 3, H, W)
    got = model(clips)
    assert got.shape == (2, 512) and model.num_features == 512
    x = _resize(clips.flatten(0, 1), 112)
    x = (x - torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1)) / torch.tensor(KINETICS_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = net.eval()(x.view(2, 2, 3, 112, 112).transpose(1, 2))
    assert _close(got, want)


def test_video_s3d_from_an_old_checkpoint_needs_13_frames(tmp_path: Path) -> None:
    """A checkpoint dict whose batch norms predate ``num_batches_tracked`` loads too; S3D needs T >= 13.

    One S3D forward costs seconds on CPU, so instead of a second one through torchvision's net this checks what
    that net receives and holds: the preprocessed clip and every saved tensor.
    """
    torch.manual_seed(2)
    state = {k: v for k, v in video.s3d(weights=None).state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "s3d.ckpt")
    model = VideoNetFeatures(str(tmp_path / "s3d.ckpt"), arch="s3d")
    loaded = model.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("classifier"))
    seen: list[Tensor] = []
    model.net.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    clips = torch.randint(0, 256, (1, 13, 3, 40, 48), dtype=torch.uint8)
    got = model(clips)
    assert got.shape == (1, 1024) and model.num_features == 1024 and torch.isfinite(got).all()
    x = _resize(clips.flatten(0, 1).float() / 255, 224)
    x = (x - torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1)) / torch.tensor(KINETICS_STD).view(1, 3, 1, 1)
    assert _close(seen[0], x.view(1, 13, 3, 224, 224).transpose(1, 2))
    with pytest.raises(ValueError, match="T >= 13"):
        model(clips[:, :12])


class _VGGish(nn.Module):
    """VGGish laid out as torchvggish / torchaudio's former prototype VGGISH: their state dicts have these keys."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, o, pool in [(1, 64, 1), (64, 128, 1), (128, 256, 0), (256, 256, 1), (256, 512, 0), (512, 512, 1)]:
            layers += [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()] + [nn.MaxPool2d(2, 2)] * pool
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 128), nn.ReLU()
        )


@pytest.fixture(scope="module")
def vggish_ref() -> _VGGish:
    torch.manual_seed(3)
    return _VGGish()


@pytest.fixture(scope="module")
def vggish_path(vggish_ref: _VGGish, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vggish") / "vggish.pth"
    torch.save(vggish_ref.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def vggish(vggish_path: Path) -> VGGishFeatures:
    return VGGishFeatures(str(vggish_path))


def _tones(freqs: list[float], seconds: float, rate: int) -> Tensor:
    t = torch.arange(int(seconds * rate), dtype=torch.float64) / rate
    return sum(0.3 * torch.sin(2 * math.pi * f * t) for f in freqs).float()  # (S,)


def test_vggish_round_trip_frozen_and_torchvggish_layout(vggish: VGGishFeatures, tmp_path: Path) -> None:
    assert set(vggish.state_dict()) == set(_VGGish().state_dict())  # the front end is not in the file
    assert not any(p.requires_grad for p in vggish.parameters()) and not vggish.train().training
    torch.save(vggish.state_dict(), tmp_path / "again.pth")
    audio = 0.1 * torch.randn(2, 16000)
    got = vggish(audio)
    assert got.shape == (2, 128) and vggish.num_features == 128 and got.abs().sum() > 0
    assert torch.equal(VGGishFeatures(str(tmp_path / "again.pth"))(audio), got)


def test_vggish_embeds_examples_in_tf_order(vggish_ref: _VGGish, vggish: VGGishFeatures) -> None:
    """The ports flatten the (6, 4, 512) conv output channel-last, as TF did, before the first linear layer."""
    ref = vggish_ref
    examples = torch.randn(2, 1, 96, 64)  # (N, 1, frames, mel bands)
    with torch.no_grad():
        want = ref.embeddings(ref.features(examples).movedim(1, -1).reshape(2, 6 * 4 * 512))
    assert _close(vggish.embed(examples), want)


def test_vggish_averages_its_examples(vggish: VGGishFeatures) -> None:
    """Examples start every 0.96 s but span 15600 samples (0.975 s): two need 30960, not 1.92 s = 30720."""
    audio = 0.1 * torch.randn(1, 30960)
    halves = vggish(torch.cat([audio[:, :15600], audio[:, 15360:]]))  # (2, 128) one example each
    assert _close(vggish(audio), halves.mean(0, keepdim=True))
    assert _close(vggish(audio[:, :30959]), halves[:1])  # one sample short of the second example


def test_vggish_resamples_to_16k(vggish_path: Path, vggish: VGGishFeatures) -> None:
    at32 = VGGishFeatures(str(vggish_path), sample_rate=32000)
    freqs = [300.0, 1000.0, 2500.0]
    at16, at32_ = _tones(freqs, 1.2, 16000)[None], _tones(freqs, 1.2, 32000)[None]
    assert (at32.log_mel(at32_) - vggish.log_mel(at16)).abs().max() < 0.01  # log-mel in about -4.6..4.6
    want, got = vggish(at16), at32(at32_)
    wrong = vggish(at32_)  # 32 kHz read as 16 kHz: an octave down
    assert (got - want).norm() < 0.01 * (wrong - want).norm()
    assert at32.min_samples == 31199
    at32(torch.zeros(1, 31199))
    with pytest.raises(ValueError, match="at least 31199 samples"):
        at32(torch.zeros(1, 31198))
    vggish(torch.zeros(1, 15600))
    with pytest.raises(ValueError, match="at least 15600 samples"):
        vggish(torch.zeros(1, 15599))


def _htk_points() -> np.ndarray:
    """The 66 frequencies (Hz) that bound VGGish's 64 mel bands: equally spaced on the HTK mel scale, 125-7500 Hz."""
    mel = lambda f: 1127 * np.log(1 + f / 700)  # noqa: E731
    return 700 * (np.exp(np.linspace(mel(125), mel(7500), 66) / 1127) - 1)


def test_vggish_log_mel_is_vggish_front_end(vggish: VGGishFeatures) -> None:
    """Frame l: samples [160 l, 160 l + 400) times a periodic Hann window, |512-point FFT|, 64 HTK mel triangles
    (linear in Hz, as torchaudio's), log(mel + 0.01)."""
    audio = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(6))
    got = vggish.log_mel(audio)[0]  # (L, 64)
    assert got.shape == (1 + (16000 - 400) // 160, 64)
    x, window = audio[0].double().numpy(), 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([x[160 * i : 160 * i + 400] * window for i in range(got.shape[0])])  # (L, 400)
    spec = np.abs(np.fft.rfft(frames, 512))  # (L, 257) magnitude
    hz, freqs = _htk_points(), np.linspace(0, 8000, 257)[:, None]
    rise, fall = (freqs - hz[:-2]) / (hz[1:-1] - hz[:-2]), (hz[2:] - freqs) / (hz[2:] - hz[1:-1])
    fbank = np.clip(np.minimum(rise, fall), 0, None)  # (257, 64)
    np.testing.assert_allclose(got.numpy(), np.log(spec @ fbank + 0.01), atol=1e-4)


def test_vggish_log_mel_of_1khz_peaks_in_its_htk_band(vggish: VGGishFeatures) -> None:
    hz = _htk_points()  # band b: rises from hz[b], peaks at hz[b + 1], ends at hz[b + 2]
    band = int(np.abs(hz[1:-1] - 1000).argmin())
    assert hz[band] < 1000 < hz[band + 2]
    logmel = vggish.log_mel(_tones([1000.0], 1.0, 16000)[None])  # (1, L, 64)
    assert int(logmel.mean(1).argmax()) == band


def test_errors_name_the_problem(tmp_path: Path, vggish: VGGishFeatures, inception: tuple[Path, nn.Module]) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        InceptionFeatures(str(tmp_path / "nope.pth"))
    torch.manual_seed(4)
    torch.save(video.r3d_18(weights=None).state_dict(), tmp_path / "r3d.pth")
    with pytest.raises(ValueError, match="missing keys"):
        InceptionFeatures(str(tmp_path / "r3d.pth"))
    with pytest.raises(ValueError, match=r"unknown arch 'i3d'.*r2plus1d_18.*s3d"):
        VideoNetFeatures(str(tmp_path / "r3d.pth"), arch="i3d")
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        VideoNetFeatures(str(tmp_path / "r3d.pth"), arch="r3d_18")(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        InceptionFeatures(str(inception[0]))(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        vggish(torch.rand(2, 1, 16000))


def test_frechet_distance_of_vggish_features(vggish: VGGishFeatures) -> None:
    gen = torch.Generator().manual_seed(5)
    real = torch.stack([_tones([f], 1.0, 16000) for f in (220.0, 440.0, 880.0)])  # (3, S)
    fake = real + 0.05 * torch.randn(real.shape, generator=gen)
    metric = FrechetDistance(vggish)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    dist = metric.compute()
    assert dist.dtype == torch.float64 and torch.isfinite(dist) and dist > 0
    same = FrechetDistance(vggish)
    same.update(real, real=True)
    same.update(real, real=False)
    scale = same.real_outer.trace() / same.real_n  # mean squared feature norm
    assert same.compute() < 1e-6 * scale
