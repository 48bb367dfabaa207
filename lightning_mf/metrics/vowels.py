"""Vowel error rate of generated audio against the conditioning transcript (METHOD §6 "Content").

On the synthetic data the spoken tokens are vowels, so a small frame-wise classifier over the MelCodec's log-mel
tokens, trained on synthetic clips (whose transcripts are exact), plays the role that an ASR model plays for real
speech. A syllable counts as an error when the classifier's average over the syllable's central frames names
another vowel than the transcript; tokens that are not vowels (real transcripts) are not scored.

That rate never asks whether the voice is silent when the transcript is: ``SpeechFrameErrorRate`` does, frame by
frame, with silence as a class, so a voice that never stops (or never starts) scores badly even with the right vowels.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_mf.codecs import MelCodec
from lightning_mf.data.synthetic import VOWELS, synthesize_clip
from lightning_mf.metrics.intervals import mean_ci95, ratio_ci95
from lightning_mf.spec import AVSpec

__all__ = ["SpeechFrameErrorRate", "VowelClassifier", "VowelErrorRate", "frame_labels", "train_vowel_classifier"]

SILENCE = 0  # class 0; vowel i is class i + 1


class VowelClassifier(nn.Module):
    """Per mel frame: silence or one of the vowels, from a window of +-4 mel frames of normalised log-mel.

    Args:
        spec: rates (the mel hop comes from it).
        n_mels: mel bands of the codec (the classifier owns its own MelCodec).
        hidden: channels of the two convolutions.
    """

    def __init__(self, spec: AVSpec = AVSpec(), n_mels: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.codec = MelCodec(spec, n_mels=n_mels)
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, hidden, 5, padding=2), nn.GELU(),
            nn.Conv1d(hidden, hidden, 5, padding=2), nn.GELU(),
            nn.Conv1d(hidden, 1 + len(VOWELS), 1),
        )

    def forward(self, audio: Tensor) -> Tensor:
        """Waveforms (B, S) -> logits (B, M, 1 + vowels) per mel frame."""
        mel = self.codec.encode(audio)  # (B, M, n_mels)
        return self.net(mel.transpose(1, 2)).transpose(1, 2)


def frame_labels(transcript: list[dict[str, Any]], num_frames: int, spec: AVSpec) -> Tensor:
    """Class of each mel frame (centred at ``i * mel_hop``): the vowel being spoken, else silence."""
    times = torch.arange(num_frames, dtype=torch.float64) * spec.mel_hop / spec.sample_rate
    labels = torch.full((num_frames,), SILENCE, dtype=torch.long)
    for entry in transcript:
        if entry["token"] in VOWELS:
            inside = (times >= entry["start"]) & (times < entry["end"])
            labels[inside] = 1 + VOWELS.index(entry["token"])
    return labels


def train_vowel_classifier(
    spec: AVSpec = AVSpec(), *, num_clips: int = 48, seconds: float = 2.0, steps: int = 300, seed: int = 10_000
) -> VowelClassifier:
    """Train on freshly synthesised clips (seeds ``seed .. seed + num_clips - 1``); a few seconds on a CPU.

    Deterministic for its arguments (initial weights included), without touching the caller's random state; so it is
    trained once per process and each caller gets its own copy (every ``GenerationEval`` and ``evaluate`` needs one).
    """
    return copy.deepcopy(_trained_vowel_classifier(spec, num_clips, seconds, steps, seed))


@lru_cache(maxsize=4)
def _trained_vowel_classifier(spec: AVSpec, num_clips: int, seconds: float, steps: int, seed: int) -> VowelClassifier:
    generator = torch.Generator().manual_seed(seed)
    clips = [synthesize_clip(seed + i, spec, seconds) for i in range(num_clips)]
    audio = torch.stack([torch.from_numpy(c.audio) for c in clips])  # (N, S)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VowelClassifier(spec)
    with torch.no_grad():
        mel_frames = model.codec.encode(audio[:1]).shape[1]
    labels = torch.stack([frame_labels(c.meta["transcript"], mel_frames, spec) for c in clips])  # (N, M)
    optimizer = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    with torch.no_grad():
        mel = model.codec.encode(audio).transpose(1, 2)  # (N, n_mels, M): encode once, train on the features
    for _ in range(steps):
        index = torch.randint(0, num_clips, (16,), generator=generator)
        logits = model.net(mel[index]).transpose(1, 2)  # (16, M, C)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[index].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


class VowelErrorRate(Metric):
    """Fraction of transcript vowels that the classifier hears as another vowel in the audio.

    Args:
        classifier: a trained :class:`VowelClassifier`.
        core: fraction of each syllable (around its centre) whose frames vote; edges are attack and release.
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, classifier: VowelClassifier, core: float = 0.6, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # torchmetrics options, e.g. sync_on_compute=False for rank-local use
        self.classifier, self.core = classifier, core
        self.add_state("errors", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("per_clip", default=[], dist_reduce_fx="cat")  # (errors, vowels) of each clip: the interval

    @torch.no_grad()
    def update(self, audio: Tensor, transcripts: list[list[dict[str, Any]]]) -> None:
        """``audio`` (B, S) and each clip's transcript (times in seconds from the clip start)."""
        if audio.shape[0] != len(transcripts):
            raise ValueError(f"VowelErrorRate: {audio.shape[0]} clips but {len(transcripts)} transcripts")
        spec = self.classifier.codec.spec
        logits = self.classifier(audio.float())  # (B, M, C)
        times = torch.arange(logits.shape[1], device=audio.device, dtype=torch.float64) * spec.mel_hop / spec.sample_rate
        counts = torch.zeros(len(transcripts), 2, dtype=torch.float64, device=audio.device)  # (B, [errors, vowels])
        for row, transcript in enumerate(transcripts):
            for entry in transcript:
                if entry["token"] not in VOWELS:
                    continue
                middle, half = (entry["start"] + entry["end"]) / 2, (entry["end"] - entry["start"]) * self.core / 2
                frames = (times >= middle - half) & (times <= middle + half)
                if not bool(frames.any()):
                    continue
                heard = int(logits[row, frames, 1:].mean(dim=0).argmax())
                counts[row, 0] += int(VOWELS[heard] != entry["token"])
                counts[row, 1] += 1
        self.errors += int(counts[:, 0].sum())
        self.total += int(counts[:, 1].sum())
        self.per_clip.append(counts)

    def compute(self) -> dict[str, Tensor]:
        """``vowel_error_rate`` (errors over every vowel said) and the half-width of its 95% interval with clips as the
        unit (``vowel_error_rate_ci95``, ``intervals.ratio_ci95``)."""
        if int(self.total) == 0:
            raise ValueError("VowelErrorRate: no vowel of any transcript fell inside the audio")
        counts = dim_zero_cat(self.per_clip)  # (N, [errors, vowels])
        rate, ci95 = ratio_ci95(counts[:, 0], counts[:, 1])
        return {"vowel_error_rate": rate.float(), "vowel_error_rate_ci95": ci95.float()}


class SpeechFrameErrorRate(Metric):
    """Per clip, the fraction of mel frames whose class (silence or a vowel) differs from the transcript's; the mean
    over clips (``speech_frame_error``) with its 95% interval (``speech_frame_error_ci95``). Clips whose transcript
    holds no vowel are not scored. States are the per-clip rates, gathered across processes.

    Args:
        classifier: a trained :class:`VowelClassifier`.
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, classifier: VowelClassifier, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.classifier = classifier
        self.add_state("rates", default=[], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, audio: Tensor, transcripts: list[list[dict[str, Any]]]) -> None:
        """``audio`` (B, S) and each clip's transcript (times in seconds from the start of the audio)."""
        if audio.shape[0] != len(transcripts):
            raise ValueError(f"SpeechFrameErrorRate: {audio.shape[0]} clips but {len(transcripts)} transcripts")
        heard = self.classifier(audio.float()).argmax(-1)  # (B, M)
        spec = self.classifier.codec.spec
        for row, transcript in enumerate(transcripts):
            if any(entry["token"] in VOWELS for entry in transcript):
                said = frame_labels(transcript, heard.shape[1], spec).to(heard.device)
                self.rates.append((heard[row] != said).double().mean()[None])

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.rates, list) and not self.rates:
            raise ValueError("SpeechFrameErrorRate: no clip with a vowel in its transcript was scored")
        mean, ci95 = mean_ci95(dim_zero_cat(self.rates))
        return {"speech_frame_error": mean.float(), "speech_frame_error_ci95": ci95.float()}
