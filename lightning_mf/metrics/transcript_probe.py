"""Has a video model learned to follow the transcript? A probe that needs no sampling (issue 16).

Near pure noise the input no longer shows the mouth (on the synthetic characters it stops being readable above noise
level ~0.9), so the model's clean estimate ``x0 = x_s - s v`` there says what it believes from its conditioning alone:
the first frame, the real history (teacher forcing) and the transcript. Measuring the mouth opening of that estimate
against the ground truth, once with each clip's own transcript and once with another clip's
(:func:`~lightning_mf.metrics.scoring.swap_transcripts`), tells the sources apart:

- ``given``: r with the timing of the transcript given, when it is another clip's: what the transcript alone explains;
- ``frame_clip``: r with the timing of the clip the frames came from, under that swapped transcript: what the model
  takes from the history and the first frame (one chunk of real history predicts the next chunk's mouth weakly, and
  negatively);
- ``own``: r with the clip's own transcript (both sources agree);
- ``still``: r with the clip's own transcript when the history is the first frame repeated (a mouth that never
  moves): what the transcript gives when the history does not show the timing;
- ``own_motion`` and ``still_motion``: how far the estimate's mouth moves (its opening's std over time, px; real
  clips ~1.5). A model that takes its mouth from the history moves it with a real history and not with a still one;
  sampled on its own history, it then continues whatever that history shows (docs/benchmarks.md, "Stage 1 knows the
  transcript"; ``benchmarks/history_sampling.py`` samples on each history).

One forward pass per level for a batch of whole clips: cheap enough to run on every checkpoint of a run, which the
full sampler (``lightning-mf evaluate --swapped``, the final word) is not on a CPU.
"""

from __future__ import annotations

import dataclasses

import torch

from lightning_mf.batch import AVBatch
from lightning_mf.flow import interpolate, x0_from_velocity
from lightning_mf.lit.base import FlowModule
from lightning_mf.metrics.oracle import lag_correlations, mouth_opening
from lightning_mf.metrics.scoring import copy_first_frame, swap_transcripts
from lightning_mf.objectives.flow_matching import TeacherForced

__all__ = ["mouth_colours", "mouth_r", "mouth_truth", "transcript_probe"]


def mouth_truth(clips: AVBatch) -> torch.Tensor:
    """The ground-truth mouth opening (B, T) of synthetic clips."""
    return torch.tensor([m["ground_truth"]["mouth_open"] for m in clips.meta], dtype=torch.float32)


def mouth_colours(clips: AVBatch) -> torch.Tensor:
    """Each synthetic clip's mouth colour (B, 3), 0..255: what ``oracle.mouth_opening`` looks for."""
    return torch.tensor([m["ground_truth"]["identity"]["mouth"] for m in clips.meta], dtype=torch.float32)


def mouth_r(truth: torch.Tensor, opening: torch.Tensor) -> float:
    """Mean over clips of the lag-0 correlation of two (B, T) mouth series (0 where a series is constant)."""
    corrs, _ = lag_correlations(truth, opening, 0)  # (B, 1)
    return float(corrs[:, 0].mean())


@torch.no_grad()
def transcript_probe(module: FlowModule, clips: AVBatch, levels: tuple[float, ...] = (1.0, 0.9), seed: int = 0, use_ema: bool = True) -> dict[str, float]:
    """``{"s<level>_<own | given | frame_clip | still>": r, "s<level>_<own | still>_motion": px}`` for a video model
    (see the module doc) on whole synthetic ``clips``; the same noise for every transcript and history."""
    if "video" not in module.seq.modalities:
        raise ValueError("transcript_probe reads mouths: the model needs a video tower")
    net = module.ema if use_ema and module.ema is not None else module.net
    swapped = swap_transcripts(clips)
    x0 = module.seq.encode(clips)
    generator = torch.Generator(device=clips.video.device).manual_seed(seed)
    noise = {m: torch.randn(x.shape, generator=generator, device=x.device) for m, x in x0.items()}
    colours = mouth_colours(clips)
    prefix = module.prefix(clips)
    still = module.seq.encode(dataclasses.replace(clips, video=copy_first_frame(clips, ("video",))["video"]))  # never moves

    def opening(conditions: AVBatch, s: float, history: dict[str, torch.Tensor] = x0) -> torch.Tensor:
        noisy = {m: interpolate(x, noise[m], s) for m, x in x0.items()}
        v = TeacherForced(net, module.seq, history, prefix, module.condition(conditions))(noisy, s, 0.0)
        video = module.seq.decode({"video": x0_from_velocity(noisy["video"], s, v["video"])})["video"]
        return mouth_opening(video, colours.to(video.device)).cpu()

    out = {}
    for s in levels:
        own, other, unmoving = opening(clips, s), opening(swapped, s), opening(clips, s, still)
        out[f"s{s:g}_own"] = mouth_r(mouth_truth(clips), own)
        out[f"s{s:g}_given"] = mouth_r(mouth_truth(swapped), other)
        out[f"s{s:g}_frame_clip"] = mouth_r(mouth_truth(clips), other)
        out[f"s{s:g}_still"] = mouth_r(mouth_truth(clips), unmoving)
        out[f"s{s:g}_own_motion"] = float(own.std(dim=1).mean())
        out[f"s{s:g}_still_motion"] = float(unmoving.std(dim=1).mean())
    return out
