"""`lightning-mf evaluate`: the GenerationEval metrics for a checkpoint, with real data as a reference row."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import torch

from lightning_mf.callbacks.generation_eval import GenerationEval, take_windows
from lightning_mf.data.datamodule import AVDataModule
from lightning_mf.lit.base import FlowModule, SamplerConfig

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


def parse_mode(mode: str, cfg_scale: float, shift: float) -> SamplerConfig:
    """``multi50`` -> Multi mode, 50 Euler steps with CFG; ``multi50heun`` -> Heun. (Few modes come with stage 3.)"""
    match = re.fullmatch(r"multi(\d+)(heun)?", mode)
    if match is None:
        raise ValueError(f"--modes: unknown mode {mode!r}; use multi<steps>, e.g. multi50 or multi25heun")
    return SamplerConfig(steps=int(match.group(1)), heun=bool(match.group(2)), cfg_scale=cfg_scale, shift=shift)


def evaluate(
    *,
    ckpt: str,
    data: str = "data/tiny",
    modes: tuple[str, ...] = ("multi50",),
    num_clips: int = 8,
    window_chunks: int = 4,
    cfg_scale: float = 3.0,
    shift: float = 3.0,
    syncnet: str | None = None,
    out: str | None = None,
) -> dict[str, dict[str, float]]:
    """Generate from held-out conditions in each mode and score the clips; print a table and write JSON.

    The reference row scores real held-out windows against other real held-out windows, with the same metrics:
    what a perfect generator would get.

    Args:
        ckpt: checkpoint of a training stage (stage 1 or 2).
        data: shard folder whose validation split gives the conditions (first frames, transcripts).
        modes: sampling modes, e.g. multi50 (Multi mode, 50 Euler steps + CFG) or multi25heun.
        num_clips: windows generated per mode (the reference row needs twice as many held-out windows).
        window_chunks: chunks per window.
        cfg_scale: classifier-free guidance scale of the Multi modes.
        shift: timestep shift of the sampling grids.
        syncnet: SyncNet weights (state_dict or SyncNetTraining checkpoint) for LSE-D, LSE-C and AV offset.
        out: path of the JSON report (optional).
    """
    module = load_module(ckpt)
    datamodule = AVDataModule(root=data, spec=module.spec, window_chunks=window_chunks, batch_size=num_clips)
    datamodule.setup("validate")
    conditions = take_windows(datamodule.val_dataloader(), num_clips)
    callback = GenerationEval(num_clips=num_clips, log_media=False, syncnet_weights=syncnet)
    callback.prepare(module, conditions)
    rows: dict[str, dict[str, float]] = {}
    try:
        reference = take_windows(datamodule.val_dataloader(), num_clips, skip=num_clips)
        media = {m: getattr(reference, m) for m in module.seq.modalities}
        rows["real (held-out)"] = callback.scores(module, conditions, media, meta=reference.meta)
    except ValueError as exc:
        print(f"no reference row: {exc}")
    with torch.no_grad():
        for mode in modes:
            rows[mode] = callback.scores(module, conditions, module.generate(conditions, sampler=parse_mode(mode, cfg_scale, shift)))
    _print_table(rows)
    if out is not None:
        Path(out).write_text(json.dumps({"ckpt": ckpt, "data": data, "num_clips": num_clips, "rows": rows}, indent=1))
        print(f"report: {out}")
    return rows


def _print_table(rows: dict[str, dict[str, float]]) -> None:
    """One line per metric, one column per row (the reference first)."""
    metrics = sorted({k for row in rows.values() for k in row})
    first = max(len(m) for m in metrics) + 2
    widths = [max(12, len(name) + 2) for name in rows]
    print("metric".ljust(first) + "".join(name.rjust(w) for name, w in zip(rows, widths)))
    for m in metrics:
        cells = [(f"{row[m]:.4g}" if m in row else "-").rjust(w) for row, w in zip(rows.values(), widths)]
        print(m.ljust(first) + "".join(cells))
