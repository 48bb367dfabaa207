"""Pretrained feature networks for ``FrechetDistance`` (FID / FVD-like / FAD), loaded only from a user's weights file.

Nothing is downloaded: each class builds its architecture uninitialised and loads the file given as
``weights`` strictly through ``load_weights`` (a state_dict, or a checkpoint dict with ``"state_dict"``), so a
missing file raises ``FileNotFoundError`` and a file of another architecture a ``ValueError`` naming the keys. The
networks are frozen and in eval mode; every class has ``num_features`` and maps a batch to (N, F) features, e.g.
``FrechetDistance(InceptionFeatures("inception_v3_google-0cc3c7bd.pth"))``.

The numbers are comparable between runs with the same network and weights, not with published FID / FVD / FAD
values, which use other ports of these networks and other preprocessing (see each class).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchaudio
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models import inception_v3, video

from lightning_mf.models.weights import load_weights

__all__ = ["InceptionFeatures", "VGGishFeatures", "VideoNetFeatures"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)
# arch -> (features, frame size, minimal T: s3d needs 13 frames for the 2 time steps of its final (2, 7, 7) avg pool)
VIDEO_ARCHS = {"r3d_18": (512, 112, 1), "mc3_18": (512, 112, 1), "r2plus1d_18": (512, 112, 1), "s3d": (1024, 224, 13)}


def _to_float(x: Tensor) -> Tensor:
    """uint8 in 0..255 or float in [0, 1] -> float32 in [0, 1]."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def _prepare(frames: Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(N, 3, H, W) frames -> (N, 3, size, size), bilinear (antialiased when shrinking), normalised per channel."""
    x = F.interpolate(_to_float(frames), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - x.new_tensor(mean).view(1, 3, 1, 1)) / x.new_tensor(std).view(1, 3, 1, 1)


def _unset(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a network without its random initialisation (seconds for VGGish): the strict load sets every tensor."""
    with torch.device("meta"):
        net = build()
    return net.to_empty(device="cpu")


def _load_torchvision(net: nn.Module, weights: str) -> None:
    """``load_weights``, also for files saved before BatchNorm had ``num_batches_tracked`` (unused in eval)."""
    try:
        load_weights(net, weights)
    except ValueError as error:
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:  # no counter in the state dict, and none filled in by BatchNorm's loader for old files
            m.num_batches_tracked, m.track_running_stats = None, False
        try:
            load_weights(net, weights)
        except ValueError:
            raise error from None
        for m in norms:
            m.track_running_stats = True


class _Frozen(nn.Module):
    """A frozen feature network kept in eval mode (pretrained batch-norm statistics, Inception's single output)."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> _Frozen:
        """Ignore ``mode``: a surrounding ``model.train()`` must not switch the features."""
        return super().train(False)


class InceptionFeatures(_Frozen):
    """Frames (N, 3, H, W), uint8 in 0..255 or float in [0, 1] -> (N, 2048) Inception-v3 pool features (FID).

    ``weights`` is torchvision's ImageNet state dict (``inception_v3_google-0cc3c7bd.pth``, AuxLogits included).
    Frames are resized to 299x299 and ImageNet-normalised; ``transform_input=True``, as torchvision sets with these
    weights, maps that back to the (x - 0.5) / 0.5 scaling the Google weights were trained on. These are torchvision's
    ImageNet Inception features, not the TF "pt_inception-2015-12-05" FID network (torch-fidelity, pytorch-fid), so
    absolute values differ from published FIDs.
    """

    num_features = 2048

    def __init__(self, weights: str) -> None:
        super().__init__()
        self.net = _unset(lambda: inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True))
        _load_torchvision(self.net, weights)  # with fc and AuxLogits, so torchvision's file loads strictly
        self.net.fc = nn.Identity()  # the 2048-d average pool (dropout is off in eval) is the feature
        self._freeze()

    def forward(self, frames: Tensor) -> Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (N, 3, H, W), got {tuple(frames.shape)}")
        return self.net(_prepare(frames, 299, IMAGENET_MEAN, IMAGENET_STD))  # (N, 2048)


class VideoNetFeatures(_Frozen):
    """Clips (B, T, 3, H, W), uint8 or float in [0, 1] -> (B, F) features of a torchvision Kinetics-400 video net.

    ``arch``: "r3d_18", "mc3_18", "r2plus1d_18" (F = 512, frames resized to 112x112) or "s3d" (F = 1024, 224x224,
    T >= 13). FVD uses I3D, which torchvision lacks; S3D is the nearest (an Inception-style 3D network with separable
    convolutions), so "FVD" from any of these is FVD-like. The features are the input of the classifier.
    """

    def __init__(self, weights: str, arch: str = "r2plus1d_18") -> None:
        super().__init__()
        if arch not in VIDEO_ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(VIDEO_ARCHS)}")
        self.arch = arch
        self.num_features, self.size, self.min_frames = VIDEO_ARCHS[arch]
        self.net = _unset(lambda: getattr(video, arch)(weights=None))
        _load_torchvision(self.net, weights)  # with the classifier, so torchvision's files load strictly
        if arch == "s3d":
            self.net.classifier = nn.Identity()  # forward: features -> avgpool -> mean over (T, H, W) -> (B, 1024)
        else:
            self.net.fc = nn.Identity()  # after the global average pool -> (B, 512)
        self._freeze()

    def forward(self, clips: Tensor) -> Tensor:
        if clips.ndim != 5 or clips.shape[2] != 3 or clips.shape[1] < self.min_frames:
            raise ValueError(
                f"clips must be (B, T, 3, H, W) with T >= {self.min_frames} for {self.arch}, got {tuple(clips.shape)}"
            )
        b, t = clips.shape[:2]
        x = _prepare(clips.flatten(0, 1), self.size, KINETICS_MEAN, KINETICS_STD)  # (B T, 3, S, S)
        x = x.view(b, t, 3, self.size, self.size).permute(0, 2, 1, 3, 4)  # (B, 3, T, S, S)
        return self.net(x)  # (B, F)


class VGGishFeatures(_Frozen):
    """Waveforms (B, S) float in [-1, 1] at ``sample_rate`` -> (B, 128) VGGish embeddings (FAD).

    Front end as VGGish's: resample to 16 kHz, 25 ms periodic-Hann frames every 10 ms (512-point FFT magnitude), 64
    HTK mel bands over 125-7500 Hz, log(mel + 0.01), cut into non-overlapping examples of 96 frames (0.96 s hop; one
    example spans 15600 samples at 16 kHz). Each waveform's features are the mean embedding of its full examples.
    The mel filters are torchaudio's (triangles in Hz, VGGish's are triangles in mel) and the resampler is torchaudio's,
    not resampy, so values differ slightly from the TF model. The raw 128-d embedding is used: no PCA / 8-bit
    quantisation postprocessing (a fixed affine map plus rounding, which adds nothing to a Fréchet distance).
    The ``features`` / ``embeddings`` key names match the PyTorch ports (torchvggish, torchaudio's former prototype
    VGGISH), so their state dicts load.
    """

    num_features = 128
    RATE, WIN, HOP, N_FFT, FRAMES = 16000, 400, 160, 512, 96
    EXAMPLE = WIN + (FRAMES - 1) * HOP  # 15600 samples at 16 kHz make one example

    def __init__(self, weights: str, sample_rate: int = 16000) -> None:
        super().__init__()
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive number of samples per second, got {sample_rate}")
        self.sample_rate = sample_rate
        # torchaudio resamples S samples to ceil(S * 16000 / sample_rate): the least S giving one example
        self.min_samples = (self.EXAMPLE - 1) * sample_rate // self.RATE + 1
        self.mel = torchaudio.transforms.MelSpectrogram(
            self.RATE, n_fft=self.N_FFT, win_length=self.WIN, hop_length=self.HOP, f_min=125.0, f_max=7500.0,
            n_mels=64, window_fn=torch.hann_window, power=1.0, center=False, norm=None, mel_scale="htk",
        )  # fmt: skip
        for m in self.mel.modules():  # the fixed front end stays out of the state dict: it is the ports' key for key
            for name, buf in list(m.named_buffers(recurse=False)):
                m.register_buffer(name, buf, persistent=False)

        def block(*channels: int) -> list[nn.Module]:  # 3x3 conv + ReLU layers, then a 2x2 max pool
            layers: list[nn.Module] = []
            for i, o in zip(channels, channels[1:]):
                layers += [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()]
            return layers + [nn.MaxPool2d(2, 2)]

        self.features = _unset(
            lambda: nn.Sequential(*block(1, 64), *block(64, 128), *block(128, 256, 256), *block(256, 512, 512))
        )  # (N, 1, 96, 64) -> (N, 512, 6, 4)
        self.embeddings = _unset(lambda: nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 128), nn.ReLU()
        ))  # fmt: skip
        load_weights(self, weights)
        self._freeze()

    def log_mel(self, audio: Tensor) -> Tensor:
        """(B, S) waveforms at ``sample_rate`` -> (B, L, 64) log-mel frames at 16 kHz, framed as VGGish does."""
        x = audio.float()
        if self.sample_rate != self.RATE:
            x = torchaudio.functional.resample(x, self.sample_rate, self.RATE)
        # torch.stft centres the 400-sample window in the 512-sample FFT frame: pad so that frame l reads samples
        # [160 l, 160 l + 400) as VGGish's frames do (and there are as many: 1 + (S - 400) // 160)
        pad = (self.N_FFT - self.WIN) // 2
        mel = self.mel(F.pad(x, (pad, pad)))  # (B, 64, L)
        return torch.log(mel + 0.01).transpose(1, 2)  # (B, L, 64)

    def embed(self, examples: Tensor) -> Tensor:
        """(N, 1, 96, 64) log-mel examples -> (N, 128) embeddings."""
        h = self.features(examples)  # (N, 512, 6, 4)
        return self.embeddings(h.permute(0, 2, 3, 1).flatten(1))  # TF's channel-last flatten order -> (N, 128)

    def forward(self, audio: Tensor) -> Tensor:
        if audio.ndim != 2:
            raise ValueError(f"audio must be (B, S) waveforms, got {tuple(audio.shape)}")
        if audio.shape[1] < self.min_samples:
            raise ValueError(
                f"VGGish needs at least {self.min_samples} samples (0.975 s) at sample_rate={self.sample_rate} for "
                f"one 0.96 s example, got {audio.shape[1]}"
            )
        logmel = self.log_mel(audio)  # (B, L, 64)
        b, k = logmel.shape[0], logmel.shape[1] // self.FRAMES  # k full examples per waveform
        examples = logmel[:, : k * self.FRAMES].reshape(b * k, 1, self.FRAMES, 64)  # (B K, 1, 96, 64)
        return self.embed(examples).view(b, k, 128).mean(1)  # (B, 128)
