"""One scoring path for generated clips (METHOD §6): ``GenerationEval`` during training and ``lightning-mf evaluate``
both call :class:`Scorer`, and :func:`reference_rows` gives every metric its floor and ceiling.

Which question each metric answers (the floor and ceiling rows tell how to read it):

- ``fd_frames`` / ``fd_clips`` / ``fd_motion`` / ``fd_audio`` (+ pretrained ``fd_<network>``): do the frames, short
  clips, frame-to-frame motion and audio look like real data? FD frames cannot see motion (copying the first frame
  wins it); FD motion can.
- ``drift_*``: does the character keep its colours over the clip (against the frame it was conditioned on)?
- ``flicker`` / ``mouth_motion`` (synthetic): is the still background still (grain, patch grids), and how far does the
  mouth move? The clip distances read i.i.d. pixel noise as motion (the first frame copied, plus noise of std 6,
  scores FD clips 10.6 instead of 32), so a low ``fd_clips`` or ``fd_motion`` with a high ``flicker`` and a small
  ``mouth_motion`` is grain, not motion.
- ``video_timing_r`` / ``audio_timing_r`` (+ ``_lag``): does the mouth, and does the voice, start and stop with the
  transcript it was given? (synthetic data: ground truth stored with each clip)
- ``oracle_sync_*`` (synthetic) and ``lse_d`` / ``lse_c`` / ``av_offset`` (SyncNet): are the generated video and audio
  in sync with each other?
- ``vowel_error_rate`` / ``speech_frame_error``: are the right vowels said, and is the voice silent when the
  transcript is (silence counted as a class)?
- ``*_timing_r_frame_clip`` (generation from a first frame with another clip's transcript, :func:`swap_transcripts`):
  does the model follow the transcript it is given (``*_timing_r`` high) and not the clip its first frame came from
  (this one near 0)? A model that copies the timing it remembers for a character passes the first test only by luck.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_mf.batch import AVBatch
from lightning_mf.metrics.drift import IdentityDrift
from lightning_mf.metrics.frechet import AudioFeatures, ClipFeatures, FrameFeatures, MotionFeatures, frechet_ci95
from lightning_mf.metrics.lipsync import LipSync
from lightning_mf.metrics.oracle import OracleSync
from lightning_mf.metrics.pretrained import VIDEO_ARCHS, InceptionFeatures, VGGishFeatures, VideoNetFeatures
from lightning_mf.metrics.stillness import BackgroundFlicker, MouthMotion
from lightning_mf.metrics.timing import TranscriptTiming
from lightning_mf.metrics.vowels import SpeechFrameErrorRate, VowelErrorRate, train_vowel_classifier
from lightning_mf.models.syncnet import SyncNet
from lightning_mf.spec import AVSpec

__all__ = ["GRAIN_STD", "PRETRAINED", "Scorer", "copy_first_frame", "reference_rows", "swap_transcripts"]

PRETRAINED = {"inception", "vggish", *VIDEO_ARCHS}
GRAIN_STD = 6.0  # pixel noise (0..255) of the "copy first frame + grain" floor: about the grain of a sharp Few 4

# Scoring runs on one process (rank 0 of a training run): a metric must not wait for the other ranks in compute()
# (torchmetrics all-gathers states whenever torch.distributed is initialised), or DDP training hangs.
LOCAL = {"sync_on_compute": False}


class Scorer:
    """Every metric that applies to the given modalities, for clips of one spec.

    Args:
        spec: rates and sizes of the clips.
        modalities: the modalities generated (``video``, ``audio`` or both).
        vowel_classifier_clips: synthetic clips that train the vowel classifier (0 disables the vowel metrics, e.g.
            for real data whose tokens are not vowels).
        syncnet_weights: a SyncNet state_dict or ``SyncNetTraining`` checkpoint; enables LSE-D/LSE-C/AV offset.
        max_offset: LipSync offsets in frames (capped to fit the clips).
        max_lag: lags searched by the oracle sync and the transcript timing, in frames.
        pretrained: ``{network: weights file}`` of pretrained feature networks for extra Fréchet distances:
            ``inception`` (frames), ``r3d_18``/``mc3_18``/``r2plus1d_18``/``s3d`` (whole clips) and ``vggish`` (whole
            clips of audio, >= 0.975 s). Nothing is downloaded.
    """

    def __init__(
        self, spec: AVSpec, modalities: tuple[str, ...], *, vowel_classifier_clips: int = 48, syncnet_weights: str | None = None,
        max_offset: int = 15, max_lag: int = 4, pretrained: dict[str, str] | None = None, bootstraps: int = 100,
    ) -> None:
        unknown = set(pretrained or {}) - PRETRAINED
        if unknown:
            raise ValueError(f"pretrained networks {sorted(unknown)} are unknown; choose from {sorted(PRETRAINED)}")
        if bootstraps < 0:
            raise ValueError(f"bootstraps must be >= 0, got {bootstraps}")
        self.spec, self.modalities, self.max_offset, self.max_lag = spec, tuple(modalities), max_offset, max_lag
        self.bootstraps = bootstraps
        self.features: dict[str, nn.Module] = {
            "frames": FrameFeatures(), "clips": ClipFeatures(), "motion": MotionFeatures(), "audio": AudioFeatures(spec.sample_rate),
        }
        for name, weights in (pretrained or {}).items():
            self.features[name] = _pretrained(name, weights, spec.sample_rate)
        self.vowels = train_vowel_classifier(spec, num_clips=vowel_classifier_clips) if "audio" in modalities and vowel_classifier_clips else None
        self.syncnet = SyncNet(spec, weights=syncnet_weights).eval() if syncnet_weights is not None else None
        # the reference side of each Fréchet distance, per feature: (the real clips it came from, their features); a
        # table scores every row against the same real clips, so their features are computed once
        self._reference_features: dict[str, tuple[Tensor, Tensor]] = {}

    def check_length(self, windows: AVBatch) -> None:
        """Fail before any generation when the windows are too short for a pretrained network."""
        frames, samples = windows.video.shape[1], windows.audio.shape[1]
        for name, feature in self.features.items():
            if frames < getattr(feature, "min_frames", 0) or samples < getattr(feature, "min_samples", 0):
                need = f"{feature.min_frames} frames" if hasattr(feature, "min_frames") else f"{feature.min_samples} audio samples"
                raise ValueError(
                    f"pretrained {name!r} needs windows of at least {need}, the evaluation windows have {frames} frames / "
                    f"{samples} samples; use longer windows (data.window_chunks) or drop {name!r}"
                )

    @torch.no_grad()
    def score(
        self, media: dict[str, Tensor], made_from: AVBatch, reference: AVBatch, shown: AVBatch | None = None, frechet: bool = True,
    ) -> dict[str, float]:
        """Metrics of ``media`` ({modality: (B, T, 3, H, W) uint8 | (B, S)}).

        Args:
            media: the clips scored.
            made_from: the clips whose first frames and transcripts the media were made from: drift is measured from
                their first frames, timing and vowels against their transcripts and ground truth.
            reference: real clips the Fréchet distances compare with.
            shown: the clips whose characters the media show (their mouth colours, on synthetic data); default
                ``made_from`` (a generator keeps the character it was conditioned on).
            frechet: compute the Fréchet distances (they depend on ``media`` and ``reference`` only).
        """
        shown = made_from if shown is None else shown
        out: dict[str, float] = {}
        video, audio = media.get("video"), media.get("audio")
        identities = [m.get("ground_truth", {}).get("identity") for m in shown.meta]
        mouths = torch.tensor([i["mouth"] for i in identities], device=_device(media)) if all(identities) else None
        truths = [m.get("ground_truth", {}).get("mouth_open") for m in made_from.meta]
        if video is not None and frechet:
            real = reference.video
            out |= self._frechet("frames", real, video, lambda v: v)  # (B, T, 3, H, W): T frames a clip
            out |= self._frechet("clips", real, video, _clip_windows)
            out |= self._frechet("motion", real, video, lambda v: v[:, None])  # one item a clip: the clip
            if "inception" in self.features:
                out |= self._frechet("inception", real, video, lambda v: v)
            for name in VIDEO_ARCHS:
                if name in self.features:
                    out |= self._frechet(name, real, video, lambda v: v[:, None])
        if video is not None:
            drift = IdentityDrift(fps=self.spec.fps, **LOCAL)
            drift.update(video, made_from.video[:, 0].to(video.device))
            out |= _floats(drift.compute())
            if mouths is not None and video.shape[1] >= 2:  # synthetic characters: a still background, a known mouth
                flicker = BackgroundFlicker(**LOCAL)
                flicker.update(video, made_from.video[:, 0].to(video.device))
                motion = MouthMotion(**LOCAL)
                motion.update(video, mouths)
                out |= _floats(flicker.compute()) | _floats(motion.compute())
            if audio is not None and self.syncnet is not None:
                max_offset = min(self.max_offset, video.shape[1] - 1)
                lipsync = LipSync(self.syncnet.to(video.device), max_offset=max_offset, **LOCAL)
                lipsync.update(video, audio)
                out |= _floats(lipsync.compute())
            if audio is not None and mouths is not None:
                sync = OracleSync(self.spec.samples_per_frame, max_lag=min(self.max_lag, video.shape[1] - 3), **LOCAL)
                sync.update(video, audio, mouths)
                if float(sync.clips.sum()) > 0:  # else no clip has both a moving mouth and sound (copy first frame)
                    out |= _floats(sync.compute())
        if all(t is not None for t in truths):
            timing = TranscriptTiming(self.spec.samples_per_frame, max_lag=min(self.max_lag, _frames(media, self.spec.samples_per_frame) - 3), **LOCAL)
            timing.update(torch.tensor(truths, device=_device(media)), video=video, audio=audio, mouth_colour=mouths)
            out |= _floats(timing.compute())
        if audio is not None and frechet:
            spf = self.spec.samples_per_frame
            out |= self._frechet("audio", reference.audio, audio, lambda a: _audio_windows(a, 4 * spf))
            if "vggish" in self.features:
                out |= self._frechet("vggish", reference.audio, audio, lambda a: a[:, None])
        if audio is not None and self.vowels is not None:
            transcripts = [m["transcript"] for m in made_from.meta]
            vowel = VowelErrorRate(self.vowels.to(audio.device), **LOCAL)
            vowel.update(audio, transcripts)
            if int(vowel.total) > 0:
                out |= _floats(vowel.compute())
            frames = SpeechFrameErrorRate(self.vowels.to(audio.device), **LOCAL)
            frames.update(audio, transcripts)
            if frames.rates:
                out |= _floats(frames.compute())
        return out

    @torch.no_grad()
    def score_swapped(self, media: dict[str, Tensor], swapped: AVBatch, original: AVBatch) -> dict[str, float]:
        """Metrics of ``media`` generated from ``swapped`` (:func:`swap_transcripts` of ``original``): every
        transcript-following metric against the transcript given, and the timing against the first frame's own clip
        as ``*_timing_r_frame_clip``."""
        out = self.score(media, made_from=swapped, reference=original, shown=original, frechet=False)
        own = self.score(media, made_from=original, reference=original, frechet=False)
        return out | {k.replace("_timing_r", "_timing_r_frame_clip"): v for k, v in own.items() if "_timing_r" in k}

    def _frechet(self, name: str, real: Tensor, fake: Tensor, inputs: Callable[[Tensor], Tensor]) -> dict[str, float]:
        """``fd_<name>`` between real and generated media, each made into ``inputs(media)`` ((B, n, ...): n inputs of
        the feature network per clip), and the half-width of its bootstrap 95% interval over clips
        (``fd_<name>_ci95``, ``bootstraps`` resamples of the clips of each side; 0 disables it)."""
        feature = self.features[name].to(real.device)
        cached = self._reference_features.get(name)
        if cached is None or cached[0] is not real:  # the same tensor object: the same clips
            self._reference_features[name] = cached = (real, _features(feature, inputs(real)))
        value, half = frechet_ci95(cached[1], _features(feature, inputs(fake)), bootstraps=self.bootstraps, **LOCAL)
        return {f"fd_{name}": value} | ({f"fd_{name}_ci95": half} if self.bootstraps else {})


def copy_first_frame(clips: AVBatch, modalities: tuple[str, ...], grain: float = 0.0) -> dict[str, Tensor]:
    """The trivial generator: the conditioning frame held for the whole clip, and silence; with ``grain`` > 0, plus
    Gaussian pixel noise of that std (0..255 levels, new in every frame, seeded: the same clips every call)."""
    video = clips.video[:, :1].expand_as(clips.video).contiguous()
    if grain > 0:
        noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(0)).to(video.device)
        video = (video.float() + grain * noise).round().clamp(0, 255).to(torch.uint8)
    media = {"video": video, "audio": torch.zeros_like(clips.audio)}
    return {m: media[m] for m in modalities}


def swap_transcripts(clips: AVBatch) -> AVBatch:
    """The same clips (first frames, characters) with the transcript, and the ground-truth timing that goes with it,
    of the next clip (the last takes the first's): the test that a model follows the transcript, not its first frame."""
    if clips.size < 2:
        raise ValueError("swap_transcripts needs at least 2 clips")
    timing = ("mouth_open", "vowel")
    meta = []
    for mine, theirs in zip(clips.meta, clips.meta[1:] + clips.meta[:1]):
        truth = dict(mine.get("ground_truth", {}))
        truth |= {k: theirs["ground_truth"][k] for k in timing if k in theirs.get("ground_truth", {})}
        meta.append(mine | {"transcript": theirs["transcript"], "ground_truth": truth})
    return AVBatch(clips.video, clips.audio, clips.start_frame, clips.keys, meta)


def reference_rows(scorer: Scorer, conditions: AVBatch, others: AVBatch) -> dict[str, dict[str, float]]:
    """The rows every metric is read between, for generation from ``conditions`` (real held-out clips) with
    ``others`` (other real held-out clips, as many):

    - ``real (held-out)``: real clips scored as if generated from themselves: what a perfect generator gets;
    - ``real, other characters``: real clips of other characters scored against these conditions: perfect quality
      that follows neither the first frame nor the transcript (the floor of drift and timing);
    - ``copy first frame``: the conditioning frame held, with silence (the floor of every quality figure that
      sees motion);
    - ``copy first frame + grain`` (video only): the same with i.i.d. pixel noise of std ``GRAIN_STD``: no motion at
      all, yet the clip distances drop to about a third of the copy's. A generator's ``fd_clips`` or ``fd_motion``
      near this row's says nothing about its motion; ``mouth_motion`` and ``flicker`` tell grain from motion.
    """
    real_media = {m: getattr(others, m) for m in scorer.modalities}
    ceiling = scorer.score(real_media, made_from=others, reference=conditions)
    distances = {k: v for k, v in ceiling.items() if k.startswith("fd_")}  # the same media against the same reference
    return {
        "real (held-out)": ceiling,
        "real, other characters": scorer.score(real_media, made_from=conditions, reference=conditions, shown=others, frechet=False) | distances,
        "copy first frame": scorer.score(copy_first_frame(conditions, scorer.modalities), made_from=conditions, reference=conditions),
    } | ({
        "copy first frame + grain": scorer.score(
            copy_first_frame(conditions, scorer.modalities, grain=GRAIN_STD), made_from=conditions, reference=conditions,
        ),
    } if "video" in scorer.modalities else {})


def _device(media: dict[str, Tensor]) -> torch.device:
    return next(iter(media.values())).device


def _frames(media: dict[str, Tensor], samples_per_frame: int) -> int:
    return media["video"].shape[1] if "video" in media else media["audio"].shape[1] // samples_per_frame


def _floats(values: dict[str, Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()}


def _clip_windows(video: Tensor, frames: int = 4) -> Tensor:
    """(B, T, 3, H, W) -> non-overlapping windows (B, T // frames, frames, 3, H, W): enough samples for a covariance."""
    usable = video.shape[1] // frames * frames
    return video[:, :usable].reshape(video.shape[0], -1, frames, *video.shape[2:])


def _audio_windows(audio: Tensor, samples: int) -> Tensor:
    """(B, S) -> non-overlapping windows (B, S // samples, samples)."""
    usable = audio.shape[1] // samples * samples
    return audio[:, :usable].reshape(audio.shape[0], -1, samples)


def _pretrained(name: str, weights: str, sample_rate: int) -> nn.Module:
    if name == "inception":
        return InceptionFeatures(weights)
    if name == "vggish":
        return VGGishFeatures(weights, sample_rate=sample_rate)
    return VideoNetFeatures(weights, arch=name)


def _features(feature: nn.Module, x: Tensor) -> Tensor:
    """(B, n, ...) inputs -> (B, m, F) features of each clip (a network may give several per input: MotionFeatures
    one per pair of frames), in batches of at most 1024 inputs."""
    with torch.no_grad():
        feats = torch.cat([feature(part) for part in x.flatten(0, 1).split(1024)])  # (B * m, F), clip by clip
    return feats.reshape(x.shape[0], -1, feats.shape[-1])
