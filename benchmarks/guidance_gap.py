"""Multi mode's guidance gap and error per checkpoint: the probe that found stage 3's feedback loop (issue 16).

    python benchmarks/guidance_gap.py CKPT [CKPT ...] --data data/reference

For each checkpoint (EMA weights, then the online ones) and noise level s: the RMS of ``v(cond) - v(uncond)`` (the
gap CFG scales) and of ``v(cond) - (eps - x0)`` (the flow-matching error), at d = 0 with the real history, on the
first held-out batches of ``--data``. A guided teacher that is the trained model makes the gap grow step after step
(docs/benchmarks.md, "The guided teacher").
"""

from __future__ import annotations

import argparse

import torch

from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.flow import interpolate, velocity_target
from lightning_mf.objectives.flow_matching import TeacherForced
from lightning_mf.tools.evaluate import load_module

LEVELS = (0.3, 0.6, 0.9)


@torch.no_grad()
def probe(ckpt: str, data: str, batches: int, window_chunks: int) -> dict[str, dict[tuple[str, float, str], float]]:
    """``{weights: {(modality, s, "gap" | "err"): RMS averaged over batches}}`` for the EMA and online weights."""
    model = load_module(ckpt)
    dm = AVDataModule(root=data, spec=model.spec, window_chunks=window_chunks, batch_size=8, num_workers=0)
    dm.setup("fit")
    loader = iter(dm.val_dataloader())
    held_out = [next(loader) for _ in range(batches)]
    out = {}
    for weights in ("ema", "net"):
        net = getattr(model, weights)
        if net is None:
            continue
        torch.manual_seed(0)  # the same noise for both weights and every checkpoint
        sums: dict[tuple[str, float, str], float] = {}
        for batch in held_out:
            x0 = model.seq.encode(batch)
            cond = model.condition(batch)
            view = TeacherForced(net, model.seq, x0, model.prefix(batch), cond, None, None)
            for s in LEVELS:
                eps = {m: torch.randn_like(x) for m, x in x0.items()}
                xs = {m: interpolate(x, eps[m], s) for m, x in x0.items()}
                u1, u0 = view(xs, s, 0.0), view.using(cond=cond.unconditional())(xs, s, 0.0)
                for m in x0:
                    sums[(m, s, "gap")] = sums.get((m, s, "gap"), 0.0) + float((u1[m] - u0[m]).pow(2).mean().sqrt()) / batches
                    error = (u1[m] - velocity_target(x0[m], eps[m])).pow(2).mean().sqrt()
                    sums[(m, s, "err")] = sums.get((m, s, "err"), 0.0) + float(error) / batches
        out["ema" if weights == "ema" else "online"] = sums
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--data", default="data/reference")
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--window-chunks", type=int, default=4)
    args = parser.parse_args()
    print("| checkpoint | weights | modality | " + " | ".join(f"gap s={s} | err s={s}" for s in LEVELS) + " |")
    print("|---|---|---|" + "---|" * (2 * len(LEVELS)))
    for ckpt in args.ckpts:
        for weights, values in probe(ckpt, args.data, args.batches, args.window_chunks).items():
            for m in sorted({m for m, _, _ in values}):
                cells = " | ".join(f"{values[(m, s, 'gap')]:.3f} | {values[(m, s, 'err')]:.3f}" for s in LEVELS)
                print(f"| {ckpt} | {weights} | {m} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
