"""`lightning-mf evaluate`: every metric for a checkpoint, between the floor and the ceiling of each (reference rows
of real and trivially generated clips, ``metrics/scoring.py``)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import time
from pathlib import Path
from typing import Literal

import torch

from lightning_mf.callbacks.generation_eval import take_windows
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.data.shards import read_index
from lightning_mf.lit.base import FlowModule, SamplerConfig
from lightning_mf.metrics.intervals import table
from lightning_mf.metrics.scoring import Scorer, reference_rows, swap_transcripts

__all__ = ["evaluate", "load_module", "parse_mode"]


def load_module(ckpt: str) -> FlowModule:
    """Rebuild the LightningModule a checkpoint was saved from (its class is recorded in the file)."""
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt {ckpt} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    name = checkpoint.get("lightning_mf_class")
    if name is None:
        raise ValueError(f"--ckpt {ckpt} is not a lightning-mf checkpoint (no 'lightning_mf_class' entry)")
    module_name, _, class_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    model = cls.load_from_checkpoint(path, map_location="cpu", weights_only=False)  # hparams hold dataclasses
    if not isinstance(model, FlowModule):
        raise ValueError(f"--ckpt {ckpt} holds a {class_name}, which does not generate (expected a training stage)")
    return model.eval()


def parse_mode(mode: str, cfg_scale: float, shift: float, cfg_above: float = 0.0) -> SamplerConfig:
    """``multi50`` -> Multi mode, 50 Euler steps with CFG ``cfg_scale`` (above noise level ``cfg_above``);
    ``multi50heun`` -> Heun; ``multi50jump0.3`` -> the 50th step jumps from s = 0.3 to data (``SamplerConfig.jump_from``);
    ``few4`` -> Few mode, 4 jumps without CFG (Mutual Forcing distils it in)."""
    match = re.fullmatch(r"(multi|few)(\d+)(heun)?(?:jump(0?\.\d+))?", mode)
    if match is None or (match.group(1) == "few" and (match.group(3) or match.group(4))):
        raise ValueError(
            f"--modes: unknown mode {mode!r}; use multi<steps>[heun][jump<level>] or few<jumps>, e.g. multi50, multi25heun, "
            "multi50jump0.3, few4"
        )
    kind = match.group(1)
    multi = kind == "multi"
    return SamplerConfig(
        mode=kind, steps=int(match.group(2)), heun=bool(match.group(3)), cfg_scale=cfg_scale if multi else 1.0, shift=shift,
        cfg_above=cfg_above if multi else 0.0, jump_from=float(match.group(4) or 0.0),
    )


def evaluate(
    *,
    ckpt: str,
    data: str = "data/tiny",
    modes: tuple[str, ...] = ("multi50",),
    num_clips: int = 32,
    window_chunks: int | None = None,
    cfg_scale: float = 3.0,
    cfg_above: float = 0.0,
    shift: float = 3.0,
    syncnet: str | None = None,
    pretrained: dict[str, str] | None = None,
    seed: int = 0,
    weights: Literal["ema", "online"] | None = None,
    bootstraps: int = 100,
    swapped: bool = False,
    ctx_s: float | None = None,
    out: str | None = None,
) -> dict[str, dict[str, float]]:
    """Generate from held-out conditions in each mode and score the clips; print a table and write JSON.

    Three reference rows come first (``metrics.scoring.reference_rows``): real held-out windows (the ceiling), real
    windows of other characters scored against these conditions, and the conditioning frame copied with silence (the
    floors). They need ``num_clips`` more held-out clips: ``data`` must hold twice ``num_clips`` (write a larger
    validation split with ``lightning-mf shards synthetic --num-clips 640 --val-fraction 0.1``).

    Args:
        ckpt: checkpoint of a training stage (1, 2 or Mutual Forcing).
        data: shard folder whose validation split gives the conditions (first frames, transcripts).
        modes: sampling modes: multi50 (Multi mode, 50 Euler steps + CFG), multi25heun, multi50jump0.3 (the last step
            a jump from noise level 0.3 to data: on the tiny preset it keeps the timing that the last low-noise Euler
            steps lose, docs/benchmarks.md), few4 (Few mode, 4 jumps).
        num_clips: clips generated per mode (the reference rows need as many again).
        window_chunks: chunks per generated window; default: whole clips (16 chunks on the tiny preset), so timing
            is scored over speech and pauses alike and not over the clip's first pause.
        cfg_scale: classifier-free guidance scale of the Multi modes.
        cfg_above: guide the Multi modes only at noise levels above this (0: every step).
        shift: timestep shift of the sampling grids.
        syncnet: SyncNet weights (state_dict or SyncNetTraining checkpoint) for LSE-D, LSE-C and AV offset.
        pretrained: ``{network: weights file}`` for Fréchet distances in pretrained feature spaces: inception, r3d_18,
            mc3_18, r2plus1d_18, s3d, vggish (e.g. ``--pretrained '{inception: inception_v3_google.pth}'``).
        seed: seed of the generation noise (the conditions are always the first held-out windows).
        weights: sample with the ``ema`` weights or the ``online`` ones (what the optimizer trained: at stage 3, an
            EMA of 0.99 after 100 steps still holds a third of stage 2); default: the EMA when the checkpoint has one.
        bootstraps: resamples of the clips behind each Fréchet distance's 95% interval (0: none); the other
            metrics' intervals are 1.96 standard errors over clips.
        swapped: also generate each mode from the same first frames with another clip's transcript (a row
            ``<mode>, another clip's transcript``, after the reference row ``real, another clip's transcript``):
            ``*_timing_r`` against the transcript given, ``*_timing_r_frame_clip`` against the first frame's own clip.
            A model that follows the transcript scores high on the first and near 0 on the second. Twice the time.
        ctx_s: noise level at which generated chunks are written to the KV cache; default: the model's own, the level
            its history was trained at (its ``ctx_s`` option).
        out: path of the JSON report (optional).
    """
    module = load_module(ckpt)
    if weights == "ema" and module.ema is None:
        raise ValueError(f"--weights ema: {ckpt} has no EMA weights (trained with ema_decay: null); use --weights online")
    weights = weights or ("ema" if module.ema is not None else "online")
    written_at = module.history_level(SamplerConfig(ctx_s=ctx_s))  # checks a given level
    index = read_index(data)
    held_out = index["splits"].get("val", {}).get("clips", 0)
    if held_out < 2 * num_clips:
        raise ValueError(
            f"{data} holds {held_out} held-out clips; --num_clips {num_clips} needs {2 * num_clips} ({num_clips} to "
            f"generate from, {num_clips} for the reference rows): lower --num_clips to {held_out // 2} or write a "
            f"larger validation split (lightning-mf shards synthetic --num-clips {20 * num_clips} --val-fraction 0.1)"
        )
    if window_chunks is None:
        window_chunks = index["frames_per_clip"] // module.spec.frames_per_chunk
    datamodule = AVDataModule(root=data, spec=module.spec, window_chunks=window_chunks, batch_size=num_clips)
    datamodule.setup("validate")
    conditions = take_windows(datamodule.val_dataloader(), num_clips)
    scorer = Scorer(module.spec, module.seq.modalities, syncnet_weights=syncnet, pretrained=pretrained, bootstraps=bootstraps)
    scorer.check_length(conditions)
    print(f"scoring the reference rows: {num_clips} held-out clips of {window_chunks} chunks; generated chunks are "
          f"written to the cache at noise level {written_at:g}", flush=True)
    rows = reference_rows(scorer, conditions, take_windows(datamodule.val_dataloader(), num_clips, skip=num_clips))
    other = swap_transcripts(conditions) if swapped else None
    if other is not None:
        rows["real, another clip's transcript"] = scorer.score_swapped({m: getattr(conditions, m) for m in module.seq.modalities}, other, conditions)
    with torch.no_grad():
        for mode in modes:
            sampler = dataclasses.replace(parse_mode(mode, cfg_scale, shift, cfg_above), seed=seed, use_ema=weights == "ema", ctx_s=written_at)
            start = time.perf_counter()
            media = module.generate(conditions, sampler=sampler, progress=f"{mode}: {num_clips} clips")
            seconds = time.perf_counter() - start
            scores = scorer.score(media, made_from=conditions, reference=conditions)
            rows[mode] = scores | {"nfe_per_chunk": sampler.nfe(), "generate_seconds": seconds}
            if other is not None:
                media = module.generate(other, sampler=sampler, progress=f"{mode}, another clip's transcript")
                rows[f"{mode}, another clip's transcript"] = scorer.score_swapped(media, other, conditions)
    _print_table(rows)
    if out is not None:
        report = {
            "ckpt": ckpt, "data": data, "num_clips": num_clips, "window_chunks": window_chunks, "seed": seed, "weights": weights,
            "swapped": swapped, "ctx_s": written_at,
        }
        Path(out).write_text(json.dumps(report | {"rows": rows}, indent=1))
        print(f"report: {out}")
    return rows


def _print_table(rows: dict[str, dict[str, float]]) -> None:
    """One line per metric, one column per row (the reference rows first); ``value±half-width of its 95% interval``
    where the metric has one."""
    print("\n".join(table(rows, sorted({k for row in rows.values() for k in row if not k.endswith("_ci95")}))))
