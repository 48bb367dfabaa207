"""Does a video model follow the transcript, and on which history? Multi 50 sampled on three histories.

    python benchmarks/history_sampling.py CKPT [CKPT ...] --data data/reference --clips 16 [--cfg 1] [--ctx-s S]
        [--real-chunks 2] [--png F]

For each checkpoint, every chunk of ``--clips`` whole held-out clips is sampled (Multi mode, 50 Euler steps at shift
3, the EMA weights, the same noise) on a given history:

- ``real``: the real clip's earlier chunks (teacher-forced sampling: what training conditions on);
- ``still``: the first frame repeated (a history whose mouth never moves);
- ``own``: the model's own earlier chunks, streamed with the KV cache (what ``lightning-mf evaluate`` scores), the
  cache written at ``--ctx-s`` (default: the model's ``ctx_s``). ``--real-chunks 2`` streams it the same way except
  that the listed chunks (1-based) enter the history as the real clip's: an oracle that tells whether one bad chunk
  derails the rest of the stream.

It prints the oracle's mouth r against the clip's own transcript, the mouth motion (the opening's std over time, px;
real clips ~1.5) and the mean |frame - real frame| (0-255 levels), over the chunks after the last real one (all of
them without ``--real-chunks``), and that |frame - real frame| chunk by chunk, one JSON line per checkpoint and
history, then a table. The frames are always the model's own samples, at the substituted chunks too. ``--png``
draws the first frame of every chunk of the first two clips, real and sampled on each history, for the first
checkpoint. A model that follows the transcript on the real history and not on its own has learned the transcript
but takes its mouth from the history (docs/benchmarks.md, "Stage 1 knows the transcript"; where the stream breaks:
"One chunk derails the stream").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

from lightning_mf.data.shards import read_index
from lightning_mf.flow import grid
from lightning_mf.lit.base import SamplerConfig
from lightning_mf.metrics.oracle import mouth_opening
from lightning_mf.metrics.scoring import copy_first_frame
from lightning_mf.metrics.transcript_probe import mouth_colours, mouth_r, mouth_truth
from lightning_mf.objectives.flow_matching import TeacherForced
from lightning_mf.sampling.samplers import guided, integrate
from lightning_mf.tools.evaluate import load_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutual_forcing import held_out  # noqa: E402  (benchmarks/ is not a package)

HISTORIES = ("real", "still", "own")


def scores(video: torch.Tensor, clips, per_chunk: int, first_chunk: int = 1) -> dict[str, Any]:
    """Mouth r, mouth motion and |frame - real| over chunks ``first_chunk..`` (1-based), and |frame - real| per chunk."""
    start = (first_chunk - 1) * per_chunk  # first frame scored
    opening = mouth_opening(video[:, start:], mouth_colours(clips))  # (B, T')
    error = (video.float() - clips.video.float()).abs().mean(dim=(0, 2, 3, 4))  # (T,)
    return {
        "from_chunk": first_chunk,
        "video_r": mouth_r(mouth_truth(clips)[:, start:], opening),
        "mouth_motion": float(opening.std(dim=1).mean()),
        "l1_to_real": float(error[start:].mean()),
        "l1_per_chunk": [round(float(e), 1) for e in error.view(-1, per_chunk).mean(1)],
    }


@torch.no_grad()
def sample_on(module, clips, history: str, cfg: float, ctx_s: float | None, seed: int = 0, real_chunks: tuple[int, ...] = ()) -> torch.Tensor:
    """Frames (B, T, 3, H, W) uint8 of every chunk sampled on ``history`` (see the module doc); on the own history,
    ``real_chunks`` (1-based) enter the history as the real clip's, and the frames there are still the model's."""
    sampler = SamplerConfig(cfg_scale=cfg, ctx_s=ctx_s, seed=seed)
    if history == "own":
        real, n = module.seq.encode(clips)["video"], module.seq.tokens_per_chunk("video")  # (B, L * n, C)
        made = []  # the model's own sample of every chunk, before any substitution

        def substitute(k: int, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            made.append(x["video"])
            return x | {"video": real[:, (k - 1) * n : k * n]} if k in real_chunks else x  # a joint model keeps its audio

        for _ in module.stream_chunks(module.prefix(clips), module.condition(clips), clips.size, module.seq.num_chunks(clips), sampler, substitute=substitute):
            pass
        return module.seq.decode({"video": torch.cat(made, dim=1)})["video"]
    x0 = module.seq.encode(clips)
    if history == "still":
        x0 = module.seq.encode(dataclasses.replace(clips, video=copy_first_frame(clips, ("video",))["video"]))
    generator = torch.Generator().manual_seed(seed)
    noise = {m: torch.randn(x.shape, generator=generator) for m, x in x0.items()}
    net = module.ema if module.ema is not None else module.net
    cond = TeacherForced(net, module.seq, x0, module.prefix(clips), module.condition(clips))
    velocity = guided(cond, cond.using(cond=None), cfg, sampler.cfg_above)
    out = integrate(velocity, noise, grid(sampler.steps, sampler.shift, few=False))
    return module.seq.decode({"video": out["video"]})["video"]


def draw(real: torch.Tensor, videos: dict[str, torch.Tensor], per_chunk: int, path: str) -> None:
    """Rows: for each of the first two clips, the real clip then each history's sample; columns: chunks."""
    import torchvision

    rows = [v[b, ::per_chunk] for b in range(min(2, real.shape[0])) for v in (real, *videos.values())]  # (chunks, 3, H, W) each
    grid = torchvision.utils.make_grid(torch.cat(rows).float() / 255, nrow=rows[0].shape[0], padding=1)
    torchvision.utils.save_image(torch.nn.functional.interpolate(grid[None], scale_factor=3, mode="nearest")[0], path)
    print(f"wrote {path}: rows {['the real clip', *(f'on the {h} history' for h in videos)]} per clip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--data", default="data/tiny")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--ctx-s", type=float, default=None, help="level the own history is written to the cache at (default: the model's ctx_s)")
    parser.add_argument("--histories", default=",".join(HISTORIES))
    parser.add_argument("--real-chunks", default="", help="chunks (1-based, comma-separated) the own history takes from the real clip")
    parser.add_argument("--png", default=None, help="frames of the first two clips: real, then one row per history")
    args = parser.parse_args()
    histories = args.histories.split(",")
    if unknown := set(histories) - set(HISTORIES):
        raise SystemExit(f"--histories: unknown {sorted(unknown)}; choose from {HISTORIES}")
    real_chunks = tuple(sorted({int(k) for k in args.real_chunks.split(",") if k.strip()}))
    if real_chunks and ("own" not in histories or min(real_chunks) < 1):
        raise SystemExit(f"--real-chunks {args.real_chunks}: 1-based chunks of the own history (add own to --histories)")
    frames = read_index(args.data)["frames_per_clip"]
    clips, rows = None, []
    for ckpt in args.ckpts:
        module = load_module(ckpt)
        if "video" not in module.seq.modalities:
            raise SystemExit(f"{ckpt}: a model without a video tower has no mouth to measure")
        if clips is None:
            clips = held_out(module, args.data, args.clips, frames // module.spec.frames_per_chunk)  # whole clips
            if real_chunks and max(real_chunks) >= module.seq.num_chunks(clips):
                raise SystemExit(f"--real-chunks {args.real_chunks}: the clips have {module.seq.num_chunks(clips)} chunks; leave some to score")
        videos = {}
        for history in histories:
            oracle = real_chunks if history == "own" else ()
            videos[history] = sample_on(module, clips, history, args.cfg, args.ctx_s, real_chunks=oracle)
            first = max(oracle) + 1 if oracle else 1
            name = f"own, real chunks {','.join(map(str, oracle))}" if oracle else history
            row = {"ckpt": ckpt, "history": name, "cfg": args.cfg, "ctx_s": module.history_level(SamplerConfig(ctx_s=args.ctx_s))} | scores(videos[history], clips, module.spec.frames_per_chunk, first)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.png and ckpt == args.ckpts[0]:
            draw(clips.video, videos, module.spec.frames_per_chunk, args.png)
    print("\n| checkpoint | history | scored from chunk | video r | mouth motion (px) | \\|frame - real\\| |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['ckpt']} | {row['history']} | {row['from_chunk']} | {row['video_r']:.2f} | {row['mouth_motion']:.2f} | {row['l1_to_real']:.1f} |")


if __name__ == "__main__":
    main()
