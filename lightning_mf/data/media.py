"""Reading and writing audio-video media: the only module that imports PyAV.

torchvision 0.28+ dropped ``read_video`` and ``torchaudio.load``/``save`` now need TorchCodec with system
FFmpeg, so media goes through PyAV (which bundles FFmpeg). Shards store video losslessly (H.264 in RGB at
qp 0, bit-exact round trip) and audio as 16-bit PCM wav (round trip within 1 LSB).
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import torch
import torchaudio.functional as AF
import torchvision.transforms.v2.functional as VF

from lightning_mf.spec import AVSpec

__all__ = ["Media", "crop_resize", "write_clip", "decode_mp4", "decode_wav", "encode_mp4", "encode_wav", "read_media"]


def encode_mp4(
    frames: np.ndarray,
    fps: int,
    *,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    target: str | Path | BinaryIO | None = None,
) -> bytes | None:
    """Encode ``frames`` (T, H, W, 3) uint8 as a lossless mp4, optionally with an AAC audio track.

    Returns the bytes when ``target`` is None, otherwise writes to the path or file object.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if audio is not None and sample_rate is None:
        raise ValueError("encode_mp4: give sample_rate together with audio")
    buffer = io.BytesIO() if target is None else None
    with av.open(buffer if buffer is not None else target, "w", format="mp4") as container:
        video = container.add_stream("libx264rgb", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        video.options = {"qp": "0", "preset": "ultrafast"}
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout="mono")
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            samples = np.asarray(audio, dtype=np.float32).reshape(1, -1)  # (1, S): planar mono
            block = 1024
            for start in range(0, samples.shape[1], block):
                piece = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + block]), format="fltp", layout="mono")
                piece.sample_rate, piece.pts = sample_rate, start
                container.mux(sound.encode(piece))
            container.mux(sound.encode())
    return None if buffer is None else buffer.getvalue()


def decode_mp4(data: bytes, stop: int | None = None) -> np.ndarray:
    """The video frames of an mp4 held in memory, (T, H, W, 3) uint8; only the first ``stop`` if given."""
    with av.open(io.BytesIO(data)) as container:
        frames = []
        for frame in container.decode(video=0):
            if stop is not None and len(frames) == stop:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError("mp4 holds no video frames")
    return np.stack(frames)


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float audio in [-1, 1] as 16-bit PCM wav bytes (values outside are clipped)."""
    pcm = np.clip(np.round(np.asarray(audio, dtype=np.float64) * 32767.0), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono 16-bit PCM wav bytes (as written by :func:`encode_wav`) to float32 (S,) and the sample rate."""
    with wave.open(io.BytesIO(data), "rb") as src:
        if src.getnchannels() != 1 or src.getsampwidth() != 2:
            raise ValueError(f"expected mono 16-bit wav, got {src.getnchannels()} channels of {8 * src.getsampwidth()} bit")
        pcm = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")
        return (pcm.astype(np.float32) / 32767.0), src.getframerate()


@dataclass
class Media:
    """A whole source file resampled to the target rates: frames (T, H, W, 3) uint8, audio (S,) float32."""

    frames: np.ndarray
    audio: np.ndarray
    fps: int
    sample_rate: int

    @property
    def seconds(self) -> float:
        """Span covered by both streams (the shorter of the two)."""
        return min(self.frames.shape[0] / self.fps, self.audio.shape[0] / self.sample_rate)


def read_media(
    video_path: str | Path,
    *,
    fps: int,
    sample_rate: int,
    size: tuple[int, int],
    audio_path: str | Path | None = None,
) -> Media:
    """Decode a video file and its audio (own track, or a separate file) at the target fps, rate and size.

    Frames are centre-cropped to the target aspect ratio, resized with antialiasing and resampled in time by
    taking, for each target frame time, the source frame nearest to it. Audio is mixed down to mono and
    resampled with torchaudio. Raises ValueError when there is no video or no audio.
    """
    frames, times = _read_frames(video_path, size)
    audio, source_rate = _read_audio(audio_path if audio_path is not None else video_path)
    duration = times[-1] + (times[-1] - times[-2] if len(times) > 1 else 1.0 / fps)  # end of the last frame
    targets = np.arange(int(np.floor(duration * fps + 1e-6))) / fps  # target frame times (s)
    nearest = np.clip(np.searchsorted(times, targets), 1, len(times) - 1) if len(times) > 1 else np.zeros(len(targets), int)
    if len(times) > 1:
        nearest = np.where(np.abs(times[nearest - 1] - targets) <= np.abs(times[nearest] - targets), nearest - 1, nearest)
    if source_rate != sample_rate:
        audio = AF.resample(torch.from_numpy(audio), source_rate, sample_rate).numpy()
    return Media(frames=frames[nearest], audio=np.clip(audio, -1.0, 1.0).astype(np.float32), fps=fps, sample_rate=sample_rate)


def _read_frames(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Frames cropped and resized to ``size`` (H, W) as they are decoded, with their presentation times (s)."""
    height, width = size
    frames, times = [], []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)  # (3, h, w)
            frames.append(crop_resize(image, height, width).permute(1, 2, 0).numpy())
            times.append(frame.time)
    if not frames:
        raise ValueError("video stream holds no decodable frames")
    order = np.argsort(times, kind="stable")  # decode order can differ from presentation order
    return np.stack(frames)[order], np.asarray(times, dtype=np.float64)[order]


def crop_resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre crop (3, h, w) uint8 to the aspect ratio of (height, width), then resize with antialiasing."""
    _, h, w = image.shape
    if h * width > w * height:  # too tall
        crop_h, crop_w = max(1, round(w * height / width)), w
    else:
        crop_h, crop_w = h, max(1, round(h * width / height))
    image = VF.center_crop(image, [crop_h, crop_w])
    if (crop_h, crop_w) != (height, width):
        image = VF.resize(image, [height, width], antialias=True)
    return image


def _read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The first audio stream as mono float32 on the container's time axis (sample 0 = time 0), and its rate.

    AAC streams start with encoder priming at negative times and some files start audio late; trimming or
    padding to time 0 keeps audio aligned with the video frames, which are placed by their own times.
    """
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("no audio track" + ("" if str(path).endswith(".mp4") else f" in {Path(path).name}"))
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        pieces, start = [], None
        for frame in container.decode(stream):
            if start is None and frame.time is not None:
                start = frame.time
            for out in resampler.resample(frame):
                pieces.append(out.to_ndarray()[0])
        for out in resampler.resample(None):
            pieces.append(out.to_ndarray()[0])
    if not pieces:
        raise ValueError("audio track holds no samples")
    audio = np.concatenate(pieces).astype(np.float32)
    offset = round((start or 0.0) * rate)
    audio = audio[-offset:] if offset < 0 else np.concatenate([np.zeros(offset, np.float32), audio])
    return audio, int(rate)


def write_clip(media: dict[str, torch.Tensor], spec: AVSpec, mp4: Path) -> list[str]:
    """Write one generated clip: ``video`` (T, 3, H, W) uint8 as ``mp4`` (with ``audio`` (S,) as its track when
    present) and ``audio`` as the wav beside it; creates the folder; returns the paths written."""
    video = media["video"].permute(0, 2, 3, 1).cpu().numpy() if "video" in media else None  # (T, H, W, 3)
    audio = media["audio"].float().cpu().numpy() if "audio" in media else None  # (S,)
    mp4.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if video is not None:
        encode_mp4(video, spec.fps, audio=audio, sample_rate=spec.sample_rate if audio is not None else None, target=mp4)
        written.append(str(mp4))
    if audio is not None:
        wav = mp4.with_suffix(".wav")
        wav.write_bytes(encode_wav(audio, spec.sample_rate))
        written.append(str(wav))
    return written
