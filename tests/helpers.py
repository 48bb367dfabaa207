"""Helpers shared by tests (kept out of the package)."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

import numpy as np
import torch

from lightning_mf.batch import AVBatch
from lightning_mf.codecs import PatchCodec
from lightning_mf.data.shards import ShardSummary
from lightning_mf.data.synthetic import PRESETS, synthesize_clip
from lightning_mf.spec import AVSpec

TINY_CLIPS = 12
REPO = Path(__file__).resolve().parents[1]


def readme_blocks(language: str, section: str = "") -> list[str]:
    """The code blocks of README.md in ``language`` (of the ``## section`` heading, if given), dedented: tests run
    what the README says instead of a copy of it."""
    text = (REPO / "README.md").read_text()
    if section:
        start = text.index(f"## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end > 0 else None]
    return [textwrap.dedent(body) for _, body in re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, flags=re.S | re.M)]


def readme_commands(section: str = "") -> list[list[str]]:
    """The commands of README.md's bash blocks, as argument lists without comments, continuation lines joined."""
    lines = [line for block in readme_blocks("bash", section) for line in block.replace("\\\n", " ").splitlines()]
    return [words for words in (shlex.split(line, comments=True) for line in lines) if words]


def tiny_summary() -> ShardSummary:
    spec = PRESETS["tiny"].spec
    return ShardSummary(
        fps=spec.fps, sample_rate=spec.sample_rate, height=spec.height, width=spec.width,
        clip_seconds=PRESETS["tiny"].clip_seconds, origin="tests",
    )


def delay_audio(audio: torch.Tensor, samples: int) -> torch.Tensor:
    """Waveforms (B, S) delayed (samples > 0: the audio lags) or advanced (< 0), zero-filled, same length."""
    out = torch.zeros_like(audio)
    if samples >= 0:
        out[:, samples:] = audio[:, : audio.shape[1] - samples]
    else:
        out[:, :samples] = audio[:, -samples:]
    return out


def execute_notebook(path: Path) -> dict[str, object]:
    """Run every code cell of a notebook in order in one namespace, as a kernel would, from the notebook's folder
    (set the environment and MPLBACKEND=Agg first); returns the namespace."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] for c in cells), f"commit {path.name} without outputs"
    namespace: dict[str, object] = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), str(path), "exec"), namespace)  # noqa: S102
    return namespace


class RotatedPatchCodec(torch.nn.Module):
    """A stand-in for a pretrained video VAE, plugged in by import path (``helpers.RotatedPatchCodec``): patch tokens
    times a fixed random orthogonal matrix (a frozen weight), so ``decode(encode(x))`` is exact to rounding."""

    def __init__(self, spec: AVSpec, patch: int = 4, tubelet: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.patches = PatchCodec(spec, patch=patch, tubelet=tubelet)
        self.tubelet, self.token_dim, self.tokens_per_chunk = tubelet, self.patches.token_dim, self.patches.tokens_per_chunk
        q, _ = torch.linalg.qr(torch.randn(self.token_dim, self.token_dim, generator=torch.Generator().manual_seed(seed)))
        self.register_buffer("rotation", q)  # (D, D) orthogonal

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.patches.encode(video) @ self.rotation

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.patches.decode(tokens @ self.rotation.T)

    def positions(self, num_frames: int, device: torch.device | str | None = None) -> torch.Tensor:
        return self.patches.positions(num_frames, device)


def synthetic_batch(seeds: range, seconds: float, spec: AVSpec = PRESETS["tiny"].spec) -> AVBatch:
    """Synthetic clips of these seeds as one batch, with their transcripts and ground truth in ``meta``."""
    clips = [synthesize_clip(s, spec, seconds) for s in seeds]
    return AVBatch(
        video=torch.stack([torch.from_numpy(c.video).permute(0, 3, 1, 2) for c in clips]),
        audio=torch.from_numpy(np.stack([c.audio for c in clips])),
        start_frame=torch.zeros(len(clips), dtype=torch.long), keys=[c.key for c in clips], meta=[c.meta for c in clips],
    )
