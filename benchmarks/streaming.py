"""Streaming latency per chunk vs chunk index (tiny joint model, CPU): flat with a rolling window.

    python benchmarks/streaming.py --chunks 64 --window 4 --steps 4 --write docs/benchmarks.md

Times each chunk of one stream (sampling steps + the cache write), with the window and without it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from lightning_mf.flow import grid
from lightning_mf.models import AVTransformer, Tower, TowerConfig
from lightning_mf.sampling import integrate
from lightning_mf.sampling.streaming import stream
from lightning_mf.sequence import AVSequencer
from lightning_mf.spec import AVSpec

from report import machine, write_section


def latencies(net: AVTransformer, seq: AVSequencer, chunks: int, window: int | None, steps: int) -> list[float]:
    prefix = seq.prefix(torch.zeros(1, 3, seq.spec.height, seq.spec.width, dtype=torch.uint8))
    sample = partial(integrate, grid=grid(steps, 3.0, few=True))
    times, last = [], time.perf_counter()
    for _ in stream(net, seq, sample, num_chunks=chunks, batch=1, prefix=prefix, window=window, generator=torch.Generator().manual_seed(0)):
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    spec = AVSpec()
    seq = AVSequencer(spec, ("video", "audio"), patch=4, tubelet=2)  # the codec of configs/tiny
    torch.manual_seed(0)
    config = TowerConfig(dim=128, depth=4, heads=4)
    net = AVTransformer({m: Tower(seq.token_dim(m), config) for m in seq.modalities}, seq.spec.chunk_seconds).eval()
    latencies(net, seq, 3, args.window, args.steps)  # warm-up
    rows = []
    for window in (args.window, None):
        t = latencies(net, seq, args.chunks, window, args.steps)
        at4, at64 = statistics.median(t[2:6]), statistics.median(t[-4:])  # around chunk 4 and the last chunks
        rows.append((f"W={window}" if window else "no window", 1e3 * at4, 1e3 * at64, at64 / at4, spec.chunk_seconds / statistics.median(t)))
    command = f"python benchmarks/streaming.py --chunks {args.chunks} --window {args.window} --steps {args.steps}"
    table = "\n".join(
        [f"| cache | ms/chunk near chunk 4 | ms/chunk near chunk {args.chunks} | ratio | x real time |", "|---|---|---|---|---|"]
        + [f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.1f} |" for r in rows]
    )
    body = (
        f"## Streaming latency per chunk (tiny joint model, 4 blocks x 128, Few mode {args.steps} steps)\n\n"
        f"`{command}` on {machine()}, batch 1, {time.strftime('%Y-%m-%d')}. A chunk is {spec.chunk_seconds:.3f} s of video and audio "
        f"({seq.tokens_per_chunk('video')} video + {seq.tokens_per_chunk('audio')} audio tokens); each chunk costs {args.steps} forwards plus one cache write.\n\n{table}"
    )
    print(write_section(args.write, "streaming", body) if args.write else body)


if __name__ == "__main__":
    main()
