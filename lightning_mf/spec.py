"""The one place where the shared time axis of video and audio is defined and checked.

Every module that needs a rate (frames per second, samples per frame, mel frames per frame, samples per
chunk) reads it from an :class:`AVSpec` instead of recomputing it, so a mismatch is caught once, at
construction, with an error that names the field to change (METHOD.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AVSpec"]


@dataclass(frozen=True)
class AVSpec:
    """Rates and sizes shared by the data, the codecs and the models.

    Defaults are the ``tiny`` synthetic preset (32x32 px, 16 fps, 16 kHz).

    Args:
        fps: video frames per second.
        sample_rate: audio samples per second (mono).
        height: frame height in pixels.
        width: frame width in pixels.
        frames_per_chunk: video frames per autoregressive chunk (audio of the same span joins them).
        mel_hop: hop length of the mel spectrogram in samples; must divide the samples of one video frame,
            so every video frame owns a whole number of mel frames.
    """

    fps: int = 16
    sample_rate: int = 16000
    height: int = 32
    width: int = 32
    frames_per_chunk: int = 2
    mel_hop: int = 250

    def __post_init__(self) -> None:
        for name in ("fps", "sample_rate", "height", "width", "frames_per_chunk", "mel_hop"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"AVSpec.{name} must be a positive integer, got {value!r}")
        if self.sample_rate % self.fps:
            raise ValueError(
                f"AVSpec: sample_rate={self.sample_rate} is not a multiple of fps={self.fps}, so a video frame "
                "would not own a whole number of audio samples; pick rates that tile (e.g. 16000 Hz with "
                "16, 20, 25 or 40 fps)"
            )
        if self.samples_per_frame % self.mel_hop:
            divisors = [h for h in range(1, self.samples_per_frame + 1) if self.samples_per_frame % h == 0]
            near = sorted(divisors, key=lambda h: abs(h - self.mel_hop))[:3]
            raise ValueError(
                f"AVSpec: mel_hop={self.mel_hop} does not divide the {self.samples_per_frame} samples of one "
                f"video frame (sample_rate={self.sample_rate} / fps={self.fps}), so mel frames would drift "
                f"against video frames; use a divisor such as {', '.join(map(str, sorted(near)))}"
            )

    @property
    def samples_per_frame(self) -> int:
        """Audio samples spanned by one video frame."""
        return self.sample_rate // self.fps

    @property
    def mels_per_frame(self) -> int:
        """Mel frames spanned by one video frame."""
        return self.samples_per_frame // self.mel_hop

    @property
    def samples_per_chunk(self) -> int:
        """Audio samples spanned by one chunk."""
        return self.samples_per_frame * self.frames_per_chunk

    @property
    def mels_per_chunk(self) -> int:
        """Mel frames spanned by one chunk."""
        return self.mels_per_frame * self.frames_per_chunk

    @property
    def chunk_seconds(self) -> float:
        """Duration of one chunk in seconds."""
        return self.frames_per_chunk / self.fps

    def frames_in(self, seconds: float) -> int:
        """Whole video frames in ``seconds`` (rounded to the nearest frame)."""
        return round(seconds * self.fps)
