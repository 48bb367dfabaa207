"""Fréchet distances of frame / clip / audio features (METHOD.md §6, "Quality").

``FrechetDistance`` is one torchmetrics ``Metric`` for any feature module mapping a batch to (N, F) features; the
maths lives in ``frechet_distance`` only. The default feature networks (``FrameFeatures``, ``ClipFeatures``,
``AudioFeatures``) are small conv nets with a deterministic random initialisation from a fixed seed: pretrained
Inception / I3D / VGGish can't be downloaded here, and random conv features are a known-reasonable default for
*relative* comparisons (they respond to edges, texture, noise and motion). Numbers are comparable only between runs
with the same architecture, seed and weights. A user's trained weights load through ``weights=PATH``.

``FrameFeatures`` has a ``num_features`` attribute and accepts uint8 frames, so it also plugs into torchmetrics'
``FrechetInceptionDistance(feature=FrameFeatures())`` (which passes inputs to a custom module untouched); that class
computes the same quantity with an eigvals-of-product square root, ours is the symmetric form below.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_mf.models.weights import load_weights

__all__ = ["AudioFeatures", "ClipFeatures", "FrameFeatures", "FrechetDistance", "MotionFeatures", "frechet_ci95", "frechet_distance", "load_weights"]

DEFAULT_SEED = 0


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Fréchet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^½) between two Gaussians, in float64.

    Tr (S1 S2)^½ = Tr (S1^½ S2 S1^½)^½ (similar matrices), and the right side is symmetric PSD, so both square roots
    come from ``eigh`` with eigenvalues clamped at 0: stable for singular covariances (more dimensions than samples),
    unlike ``eigvals(S1 @ S2)`` (torchmetrics' ``_compute_fid``) or ``scipy.linalg.sqrtm`` of the non-symmetric
    product. The result is clamped at 0 against rounding. Leading batch dimensions ((..., F) means, (..., F, F)
    covariances) give one distance each: the bootstrap computes its resamples at once.
    """
    mu1, mu2, sigma1, sigma2 = (t.to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    if mu1.ndim < 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must be (F,) vectors of one size, got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    dim = mu1.shape[-1]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (*mu1.shape, dim):
            raise ValueError(f"{name} must be ({dim}, {dim}) to match the means, got {tuple(s.shape)}")
    sigma1 = (sigma1 + sigma1.mT) / 2
    sigma2 = (sigma2 + sigma2.mT) / 2
    w, v = torch.linalg.eigh(sigma1)
    root1 = (v * w.clamp_min(0).sqrt()[..., None, :]) @ v.mT  # (..., F, F) S1^½
    inner = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.mT) / 2).clamp_min(0).sqrt().sum(-1)
    trace = sigma1.diagonal(dim1=-2, dim2=-1).sum(-1) + sigma2.diagonal(dim1=-2, dim2=-1).sum(-1)
    return ((mu1 - mu2).square().sum(-1) + trace - 2 * trace_sqrt).clamp_min(0)


class FrechetDistance(Metric):
    """Fréchet distance between the features of real and generated inputs, accumulated exactly.

    Per side the states are the feature sum (F,), the outer-product sum (F, F) and the count, all float64 and
    summed across processes, so any batching (and DDP) gives the one-shot value.

    Args:
        feature: module mapping a batch of inputs to (N, F) features; frozen and put in eval mode. ``None``: ``update``
            takes (N, F) features directly.
        num_features: F; defaults to ``feature.num_features``.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, feature: nn.Module | None = None, num_features: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_features is None:
            num_features = getattr(feature, "num_features", None)
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(
                f"num_features must be a positive int, got {num_features!r}; pass num_features= or give the feature "
                "module an int `num_features` attribute"
            )
        self.num_features = num_features
        self.feature = feature.eval().requires_grad_(False) if feature is not None else None
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{side}_outer", torch.zeros(num_features, num_features, dtype=torch.float64), dist_reduce_fx="sum"
            )
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def train(self, mode: bool = True) -> FrechetDistance:
        """Keep the feature module in eval mode whatever the surrounding model does."""
        super().train(mode)
        if self.feature is not None:
            self.feature.eval()
        return self

    def update(self, x: Tensor, real: bool) -> None:
        """Add a batch of inputs (features if ``feature`` is None) to the real or generated side. Features may be
        (N, F) or grouped per clip, (B, n, F) (flattened)."""
        with torch.no_grad():
            feats = self.feature(x) if self.feature is not None else x  # (N, F) | (B, n, F)
        if self.feature is None and feats.ndim == 3:
            feats = feats.flatten(0, 1)
        if feats.ndim != 2 or feats.shape[1] != self.num_features:
            raise ValueError(f"features must be (N, {self.num_features}) or (B, n, {self.num_features}), got {tuple(feats.shape)}")
        feats = feats.to(torch.float64)
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + feats.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + feats.T @ feats)
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + feats.shape[0])

    def _gaussian(self, side: str) -> tuple[Tensor, Tensor]:
        n = getattr(self, f"{side}_n")
        if n < 2:
            raise ValueError(
                f"FrechetDistance needs at least 2 {side} samples to estimate a covariance, got {int(n)}; "
                f"call update(..., real={side == 'real'}) with more inputs"
            )
        mean = getattr(self, f"{side}_sum") / n  # (F,)
        cov = (getattr(self, f"{side}_outer") - n * torch.outer(mean, mean)) / (n - 1)  # (F, F)
        return mean, cov

    def compute(self) -> Tensor:
        """The Fréchet distance (float64 scalar) between the two accumulated Gaussians."""
        return frechet_distance(*self._gaussian("real"), *self._gaussian("fake"))


def frechet_ci95(real: Tensor, fake: Tensor, bootstraps: int = 100, seed: int = 0, **kwargs: Any) -> tuple[float, float]:
    """The Fréchet distance between features grouped per clip, ``real`` (B1, n1, F) and ``fake`` (B2, n2, F), and the
    half-width of its bootstrap 95% interval over clips.

    The clips of each side are resampled with replacement ``bootstraps`` times (frames of one clip are not
    independent, so whole clips are the unit); the half-width is half the distance between the 2.5% and 97.5%
    quantiles of the resampled distances (0 when ``bootstraps`` is 0). Each resample is exact and all are computed at
    once: its Gaussian from the per-clip sums weighted by how often it drew each clip, then one batched
    eigendecomposition; or, with fewer samples than features (short evaluations during training), from the weighted
    samples themselves, through the singular values of an (n1, n2) matrix instead of (F, F) eigendecompositions.
    (torchmetrics' ``BootStrapper`` copies and refills a metric per resample: most of an evaluation's scoring time.) Resampling repeats clips, which lowers the spread of
    each side, so the resampled distances sit above the full-sample value: read the half-width as the uncertainty of
    the value, not the quantiles as an interval around it. ``kwargs`` go to the metric (e.g. ``sync_on_compute=False``).
    """
    if real.ndim != 3 or fake.ndim != 3:
        raise ValueError(f"features must be grouped per clip, (B, n, F); got {tuple(real.shape)} and {tuple(fake.shape)}")
    point = FrechetDistance(num_features=real.shape[-1], **kwargs)
    point.update(real, real=True)
    point.update(fake, real=False)
    if not bootstraps:
        return float(point.compute()), 0.0
    generator = torch.Generator().manual_seed(seed)  # the same resamples every call, the caller's RNG untouched
    counts = [_draw_counts(side.shape[0], bootstraps, generator).to(side.device) for side in (real, fake)]  # each side on its own
    n1, n2, dim = real.shape[0] * real.shape[1], fake.shape[0] * fake.shape[1], real.shape[-1]
    if n1 * n2 <= dim * dim:  # fewer samples than features: the distances from the samples, (n1 n2 F) not (F^3) each
        distances = _frechet_of_samples(*(_centred_samples(side, c) for side, c in zip((real, fake), counts)))
    else:
        distances = frechet_distance(*_resampled_gaussians(real, counts[0]), *_resampled_gaussians(fake, counts[1]))  # (bootstraps,)
    low, high = torch.quantile(distances, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(point.compute()), (high - low) / 2


def _draw_counts(clips: int, bootstraps: int, generator: torch.Generator) -> Tensor:
    """How often each of ``bootstraps`` resamples, with replacement, draws each clip: (R, B) float64."""
    draws = torch.randint(clips, (bootstraps, clips), generator=generator)
    return torch.zeros(bootstraps, clips, dtype=torch.float64).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))


def _resampled_gaussians(feats: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Means (R, F) and covariances (R, F, F) of the resamples of the clips of ``feats`` (B, n, F) that draw each clip
    ``counts`` (R, B) times: the per-clip sums weighted by the counts."""
    feats = feats.to(torch.float64)
    n = counts.sum(1, keepdim=True) * feats.shape[1]  # (R, 1) samples in each resample
    mean = counts @ feats.sum(1) / n  # (R, F)
    outer = torch.einsum("rb,bfg->rfg", counts, feats.mT @ feats)  # (R, F, F) sum of x x^T
    cov = (outer - n[..., None] * mean[:, :, None] * mean[:, None, :]) / (n[..., None] - 1)
    return mean, cov


def _centred_samples(feats: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Means (R, F) of the resamples, and their samples (R, B * n, F) centred and scaled by sqrt(count / (N - 1)), so
    that ``A^T A`` is each resample's covariance."""
    feats = feats.to(torch.float64)
    weights = counts.repeat_interleave(feats.shape[1], dim=1)  # (R, B * n): each sample counts as often as its clip
    samples = feats.flatten(0, 1)  # (B * n, F)
    n = weights.sum(1, keepdim=True)  # (R, 1)
    mean = weights @ samples / n
    return mean, (weights / (n - 1)).sqrt()[..., None] * (samples[None] - mean[:, None])


def _frechet_of_samples(first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> Tensor:
    """The Fréchet distances (R,) of :func:`_centred_samples`' resamples: with S1 = A^T A and S2 = B^T B,
    Tr (S1 S2)^½ is the sum of the singular values of A B^T (the nonzero eigenvalues of A^T A B^T B are those of
    (A B^T)(A B^T)^T), and Tr S1 = ||A||^2."""
    (mu1, a), (mu2, b) = first, second
    trace_sqrt = torch.linalg.svdvals(a @ b.mT).sum(-1)
    return ((mu1 - mu2).square().sum(-1) + a.square().sum((1, 2)) + b.square().sum((1, 2)) - 2 * trace_sqrt).clamp_min(0)



def _seeded_init(module: nn.Module, seed: int) -> None:
    """Deterministic Kaiming-normal conv weights and zero biases, independent of the global RNG."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
            nn.init.zeros_(m.bias)


class FrameFeatures(nn.Module):
    """Frames (N, 3, H, W) uint8 in 0..255 or float in [0, 1] -> (N, 6 * width) features.

    Three random 3x3 conv layers (stride 1, 2, 2) with ReLU; the features are the spatial mean and standard
    deviation of every layer, so they see edges, texture, sharpness and noise at several scales and any
    resolution. The first layer's kernels are zero-mean (DC-free): features describe structure and colour
    *contrast* rather than the flat colour of each character, which otherwise dominates the distance on a few
    dozen identities and hides blur and noise (a global colour shift is therefore not seen).
    """

    def __init__(self, width: int = 32, seed: int = DEFAULT_SEED, weights: str | None = None) -> None:
        super().__init__()
        self.num_features = 6 * width
        self.convs = nn.ModuleList(
            [nn.Conv2d(3, width, 3, padding=1)]
            + [nn.Conv2d(width, width, 3, stride=2, padding=1) for _ in range(2)]
        )
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1), persistent=False)
        _seeded_init(self, seed)
        with torch.no_grad():
            first = self.convs[0].weight  # (C, 3, 3, 3)
            first -= first.mean(dim=(2, 3), keepdim=True)
        if weights is not None:
            load_weights(self, weights)

    def forward(self, frames: Tensor) -> Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (N, 3, H, W), got {tuple(frames.shape)}")
        x = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()
        h = (x - self.mean) / self.std  # (N, 3, H, W)
        stats = []
        for conv in self.convs:
            h = torch.relu(conv(h))  # (N, C, H', W')
            stats += [h.mean(dim=(2, 3)), h.std(dim=(2, 3))]
        return torch.cat(stats, dim=1)  # (N, 6C)


class MotionFeatures(nn.Module):
    """Video clips (B, T, 3, H, W), T >= 2 -> (B * (T - 1), 2 * width) features, one per pair of consecutive frames.

    A random zero-mean 3x3 conv of the frame difference, ReLU, pooled by spatial mean and max (the max keeps small
    moving parts, a mouth, visible). A frozen clip gives all-zero features, so no static generator matches real
    motion: its Fréchet distance (``fd_motion``) is the quality figure that copying the first frame cannot win,
    which FD frames can.
    """

    def __init__(self, width: int = 32, seed: int = DEFAULT_SEED + 1, weights: str | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.num_features = 2 * width
        _seeded_init(self.conv, seed)
        with torch.no_grad():
            self.conv.weight -= self.conv.weight.mean(dim=(2, 3), keepdim=True)
        if weights is not None:
            load_weights(self, weights)

    def per_pair(self, clips: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> (B, T - 1, 2 * width)."""
        if clips.ndim != 5 or clips.shape[2] != 3 or clips.shape[1] < 2:
            raise ValueError(f"clips must be (B, T, 3, H, W) with T >= 2, got {tuple(clips.shape)}")
        b, t = clips.shape[:2]
        x = clips.float() / 255 if clips.dtype == torch.uint8 else clips.float()
        diff = (x[:, 1:] - x[:, :-1]).flatten(0, 1) / 0.25  # (B (T-1), 3, H, W), FrameFeatures' scale
        h = torch.relu(self.conv(diff))  # (B (T-1), C, H, W)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1).view(b, t - 1, -1)

    def forward(self, clips: Tensor) -> Tensor:
        return self.per_pair(clips).flatten(0, 1)


class ClipFeatures(nn.Module):
    """Video clips (B, T, 3, H, W), T >= 2 -> (B, 8 * width) features.

    Appearance: ``FrameFeatures`` averaged over time (6 * width). Motion: ``MotionFeatures`` averaged over time
    (2 * width). Frozen or stuttering video drives the motion half to zero, which frame-level features can't see.
    """

    def __init__(self, width: int = 32, seed: int = DEFAULT_SEED, weights: str | None = None) -> None:
        super().__init__()
        self.frame = FrameFeatures(width=width, seed=seed)
        self.motion = MotionFeatures(width=width, seed=seed + 1)
        self.num_features = 8 * width
        if weights is not None:
            load_weights(self, weights)

    def forward(self, clips: Tensor) -> Tensor:
        motion = self.motion.per_pair(clips).mean(1)  # (B, 2C); checks the shape
        b, t = clips.shape[:2]
        appearance = self.frame(clips.flatten(0, 1)).view(b, t, -1).mean(1)  # (B, 6C)
        return torch.cat([appearance, motion], dim=1)  # (B, 8C)


class AudioFeatures(nn.Module):
    """Waveforms (B, S) float in [-1, 1] -> (B, 2 * width + n_mels) features.

    Log-mel spectrogram, then two random 1-D conv layers over time (mel bands as channels) with ReLU, pooled by
    mean and standard deviation over time, plus the mean log-mel per band (the spectral envelope, which exposes
    low-passing and added noise directly).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 40,
        width: int = 32,
        seed: int = DEFAULT_SEED,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        n_fft = 2 ** math.ceil(math.log2(0.025 * sample_rate))  # ~25 ms window
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels)
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, width, 3, padding=1), nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.num_features = 2 * width + n_mels
        _seeded_init(self, seed)
        if weights is not None:
            load_weights(self, weights)

    def forward(self, audio: Tensor) -> Tensor:
        if audio.ndim != 2:
            raise ValueError(f"audio must be (B, S) waveforms, got {tuple(audio.shape)}")
        logmel = torch.log10(self.mel(audio.float()) + 1e-6)  # (B, M, L) in about -6..2
        logmel = (logmel + 3) / 3  # roughly unit scale for the random convs
        h = self.net(logmel)  # (B, C, L/2)
        return torch.cat([h.mean(2), h.std(2), logmel.mean(2)], dim=1)  # (B, 2C + M)
