"""The GPU check (issue 17): everything a lent GPU should measure, in one run, written as the "GPU" section of
docs/benchmarks.md. ``benchmarks/gpu.sh`` sets up the environment and runs this; ``--cpu --tiny`` runs every row at
tiny sizes on the CPU in seconds (tests/test_gpu_benchmark.py), so the script cannot rot while no GPU is lent.

    python benchmarks/gpu.py [--cpu] [--tiny] [--steps 10] [--write docs/benchmarks.md]

Rows:
- training steps of stage 2 (joint) and stage 3 (Mutual Forcing) of ``configs/small`` in bf16-mixed, through
  LightningCLI and Trainer.fit as a user runs them: step time, tokens/s (tokens through the network, every forward of
  a step), peak memory, FLOPs (``torch.utils.flop_counter`` on one step) and MFU; then stage 2 again, one factor at a
  time: FSDP2 (``ModelParallelStrategy``) on 1 device, activation checkpointing, ``torch.compile``;
- flex attention (block mask from the layout rule) against SDPA (dense mask): the largest output and gradient
  difference and the time of one training forward + backward with each;
- streaming Few 4 / Few 8 at batch 1: frames per second and time to the first chunk at 64x64 with the small model,
  and at the paper's 192x336 with a model of the paper's order of size (random weights; speed only), beside the
  paper's 30 FPS; KV-cache bytes per chunk in the dtype it is written in;
- the 2-process FSDP2 run: not here on one device (the suite runs it on 2 CPU processes, tests/e2e/test_sharded.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.flop_counter import FlopCounterMode

from report import machine, write_section

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s of the SXM parts
PAPER_FPS = 30.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(Callback):
    """Times each training step (after ``warmup``), counts the tokens through the network per step, and the FLOPs of
    the first step after the warm-up (a step of its own, not timed: counting slows it)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self.tokens, self.flops = warmup, [], [], None
        self._start, self._counter, self._step_tokens, self._hook = 0.0, None, 0, None

    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        if module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(module.device)
        def count(net: Any, args: tuple, kwargs: dict) -> None:
            tokens = args[0] if args else kwargs["tokens"]
            self._step_tokens += sum(t.x.shape[0] * t.x.shape[1] for t in tokens.values())

        self._hook = module.net.register_forward_pre_hook(count, with_kwargs=True)

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.warmup and self.flops is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        sync(module.device)
        self._step_tokens, self._start = 0, time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        sync(module.device)
        elapsed = time.perf_counter() - self._start
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops, self._counter = self._counter.get_total_flops(), None
        elif trainer.global_step > self.warmup:
            self.times.append(elapsed)
            self.tokens.append(self._step_tokens)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        self._hook.remove()


def shards(root: Path, preset: str, clips: int) -> str:
    from lightning_mf.cli import run

    out = root / f"shards-{preset}"
    if not out.exists():
        run(["shards", "synthetic", "--preset", preset, "--num-clips", str(clips), "--val-fraction", "0.0", "--out", str(out)])
    return str(out)


def train(stage: str, args: argparse.Namespace, data: str, *, fsdp: bool = False, checkpointing: bool = False, compiled: bool = False) -> dict[str, Any]:
    """Fit ``--steps`` steps of ``configs/<preset>/<stage>.yaml`` (random init, no logging or checkpoints)."""
    from lightning_mf.cli import MFLightningCLI
    from lightning_mf.data.datamodule import AVDataModule

    preset = "tiny" if args.tiny else "small"
    init = {"joint": ["--model.init_args.video_ckpt", "null", "--model.init_args.audio_ckpt", "null"], "mutual_forcing": ["--model.init_args.init_ckpt", "null"]}
    cli_args = [
        "--config", str(REPO / "configs" / preset / f"{stage}.yaml"), *init[stage], "--data.root", data, "--data.num_workers", "0",
        "--trainer.accelerator", "cpu" if args.cpu else "gpu", "--trainer.devices", "1", "--trainer.precision", "bf16-mixed",
        "--trainer.max_steps", str(args.warmup + 1 + args.steps), "--trainer.logger", "false", "--trainer.callbacks", "[]",
        "--trainer.enable_checkpointing", "false", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.init_args.activation_checkpointing", str(checkpointing).lower(),
    ]
    if fsdp:
        cli_args += ["--trainer.strategy", json.dumps({"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"})]
    cli = MFLightningCLI(L.LightningModule, AVDataModule, subclass_mode_model=True, args=cli_args, run=False, save_config_callback=None)
    if compiled:
        cli.model.net.compile()
    timer = StepTimer(args.warmup)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    device = cli.model.device
    step = statistics.median(timer.times)
    # CUDA: the peak of this run's allocations; CPU: the process's peak resident set so far (a proxy)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_flops = next((v for k, v in PEAK_BF16.items() if k in machine_name(args)), None)
    row = {
        "params_m": sum(p.numel() for p in cli.model.net.parameters()) / 1e6, "step_ms": 1e3 * step,
        "tokens_per_s": statistics.median(timer.tokens) / step, "peak_gib": peak / 2**30, "tflop_per_step": (timer.flops or 0) / 1e12,
        "mfu": (timer.flops / step / peak_flops) if (peak_flops and timer.flops) else None,
    }
    del cli
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def attention_check(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """flex vs SDPA on a teacher-forcing layout of the small model's shape: max |difference| of the outputs (and of
    the gradients, on CUDA: flex attention has no CPU backward) and the time of a forward (+ backward)."""
    from lightning_mf.models.attention import LayoutMask, attend_layouts, attention_backend
    from lightning_mf.models.masks import Layout

    chunks, per_chunk, heads, dim = (4, 16, 2, 32) if args.tiny else (8, 276, 6, 64)
    chunk = torch.arange(chunks + 1).repeat_interleave(per_chunk)
    clean = Layout(chunk, torch.ones_like(chunk, dtype=torch.bool))
    layout = Layout.cat([clean, Layout(chunk[per_chunk:], torch.zeros(len(chunk) - per_chunk, dtype=torch.bool))])
    layout = Layout(layout.chunk.to(device), layout.clean.to(device))
    g = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(4, heads, len(layout), dim, generator=g, device=device, dtype=dtype) for _ in range(3))
    backward = device.type == "cuda"
    out, grads, ms = {}, {}, {}
    for backend in ("sdpa", "flex"):
        with attention_backend(backend):
            xs = [t.clone().requires_grad_(backward) for t in (q, k, v)]
            for i in range(3):  # warm-up (flex compiles on CUDA), then one timed call
                sync(device)
                start = time.perf_counter()
                with torch.set_grad_enabled(backward):
                    o = attend_layouts(*xs, LayoutMask(layout, layout))
                    if backward:
                        grads[backend] = torch.autograd.grad(o.float().square().sum(), xs)
                sync(device)
                ms[backend] = 1e3 * (time.perf_counter() - start)
            out[backend] = o.float()
    row = {"tokens": len(layout), "sdpa_ms": ms["sdpa"], "flex_ms": ms["flex"], "max_out_diff": float((out["flex"] - out["sdpa"]).abs().max())}
    row["max_grad_diff"] = max(float((a.float() - b.float()).abs().max()) for a, b in zip(grads["flex"], grads["sdpa"])) if backward else None
    return row


def streaming(args: argparse.Namespace, device: torch.device, size: str) -> dict[str, Any]:
    """Few 4 and Few 8 at batch 1 (window 8): frames per second after the first chunk, time to the first chunk, and
    KV-cache bytes per cached chunk."""
    from lightning_mf.flow import grid
    from lightning_mf.models import AVTransformer, KVCache, Layout, Tokens, Tower, TowerConfig
    from lightning_mf.sampling import integrate
    from lightning_mf.sampling.streaming import stream
    from lightning_mf.sequence import AVSequencer
    from lightning_mf.spec import AVSpec

    if args.tiny:  # the same rows at tiny sizes (the paper's aspect ratio for the second)
        spec = AVSpec() if size == "64x64" else AVSpec(height=48, width=84)
        tower, codec, chunks = TowerConfig(dim=32, depth=2, heads=2), {"patch": 4, "tubelet": 2}, 4
    elif size == "64x64":  # configs/small
        spec = AVSpec(fps=25, sample_rate=16000, height=64, width=64, frames_per_chunk=5, mel_hop=160)
        tower, codec, chunks = TowerConfig(dim=384, depth=8, heads=6, time_max_hz=160.0), {"patch": 4, "tubelet": 5}, 24
    else:  # the paper's frame size; a tower of about 0.9 B parameters each (1.8 B in all)
        spec = AVSpec(fps=25, sample_rate=16000, height=192, width=336, frames_per_chunk=5, mel_hop=160)
        tower, codec, chunks = TowerConfig(dim=1536, depth=24, heads=12, time_max_hz=160.0), {"patch": 8, "tubelet": 5}, 24
    seq = AVSequencer(spec, ("video", "audio"), **codec)
    torch.manual_seed(0)
    net = AVTransformer({m: Tower(seq.token_dim(m), tower) for m in seq.modalities}, spec.chunk_seconds).to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)  # bf16-mixed, as training runs: a bf16 cache
    first = torch.zeros(1, 3, spec.height, spec.width, dtype=torch.uint8, device=device)
    row: dict[str, Any] = {"size": f"{spec.height}x{spec.width}", "params_m": sum(p.numel() for p in net.parameters()) / 1e6}
    row["tokens_per_chunk"] = {m: seq.tokens_per_chunk(m) for m in seq.modalities}
    for steps in (4, 8):
        sample = lambda velocity, noise, steps=steps: integrate(velocity, noise, grid(steps, 3.0, few=True))  # noqa: E731
        with torch.no_grad(), autocast:
            for _ in stream(net, seq, sample, num_chunks=2, batch=1, prefix=seq.prefix(first), window=8, device=device):
                pass  # warm-up
            sync(device)
            start = time.perf_counter()
            times = []
            for _ in stream(net, seq, sample, num_chunks=chunks, batch=1, prefix=seq.prefix(first), window=8, device=device):
                sync(device)
                times.append(time.perf_counter() - start)
        rest = (times[-1] - times[0]) / (len(times) - 1)
        row[f"few{steps}_fps"] = spec.frames_per_chunk / rest
        row[f"few{steps}_first_chunk_ms"] = 1e3 * times[0]
    with torch.no_grad(), autocast:  # the cache after more chunks than the window holds
        cache = KVCache(window=8)
        net(seq.prefix(first), cache=cache, write=True)
        for k in range(1, 12):
            tokens = {}
            for m in seq.modalities:
                pos, chunk = seq.positions(m, k, 1, device=device)
                tokens[m] = Tokens(torch.randn(1, len(chunk), seq.token_dim(m), device=device), torch.zeros(1, len(chunk), device=device), pos, Layout(chunk, torch.ones_like(chunk, dtype=torch.bool)))
            net(tokens, cache=cache, write=True)
    held = {m: len(cache.layout(m)) for m in seq.modalities}
    bytes_ = sum(2 * k.element_size() * k.shape[0] * k.shape[1] * held[m] * k.shape[3] for m in seq.modalities for k in cache.k[m])
    row["cache_dtype"] = str(cache.k["video"][0].dtype).replace("torch.", "")
    row["cache_mib_per_chunk"] = bytes_ / 2**20 / len(set(cache.layout("video").chunk.tolist()))
    return row


def machine_name(args: argparse.Namespace) -> str:
    if not args.cpu and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return machine()


def attempt(rows: dict[str, Any], name: str, run: Callable[[], dict[str, Any]]) -> None:
    """One measurement; a failure becomes its row's result (the GPU time is spent either way: keep the rest)."""
    print(f"== {name}", flush=True)
    try:
        rows[name] = run()
    except Exception as error:  # noqa: BLE001 - recorded in the report, and printed
        traceback.print_exc()
        rows[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    print(json.dumps(rows[name]), flush=True)


ROWS = (
    "stage 2 (joint)", "stage 3 (Mutual Forcing)", "stage 2, FSDP2 on 1 device", "stage 2, activation checkpointing",
    "stage 2, torch.compile", "attention: flex vs SDPA", "streaming 64x64", "streaming 192x336", "2-process FSDP2",
)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu" if args.cpu else "cuda")
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = shards(Path(tmp), "tiny" if args.tiny else "small", 8 if args.tiny else 64)
        attempt(rows, "stage 2 (joint)", lambda: train("joint", args, data))
        attempt(rows, "stage 3 (Mutual Forcing)", lambda: train("mutual_forcing", args, data))
        attempt(rows, "stage 2, FSDP2 on 1 device", lambda: train("joint", args, data, fsdp=True))
        attempt(rows, "stage 2, activation checkpointing", lambda: train("joint", args, data, checkpointing=True))
        if args.cpu:
            rows["stage 2, torch.compile"] = {"skipped": "GPU only (compiling on 2 CPU cores takes minutes)"}
        else:
            attempt(rows, "stage 2, torch.compile", lambda: train("joint", args, data, compiled=True))
    attempt(rows, "attention: flex vs SDPA", lambda: attention_check(args, device))
    attempt(rows, "streaming 64x64", lambda: streaming(args, device, "64x64"))
    attempt(rows, "streaming 192x336", lambda: streaming(args, device, "192x336"))
    rows["2-process FSDP2"] = {"skipped": "needs 2 devices; the suite runs it on 2 CPU processes (tests/e2e/test_sharded.py)"}
    assert tuple(rows) == ROWS, f"rows {tuple(rows)} are not the documented {ROWS}"
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def report(rows: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    lines = [
        "## GPU" + (" (CPU rehearsal at tiny sizes: these are not GPU figures)" if args.cpu else ""),
        "",
        f"`{command}` on {machine_name(args)}, {time.strftime('%Y-%m-%d')}. Training: bf16-mixed, batch and sizes of "
        f"`configs/{'tiny' if args.tiny else 'small'}`, median of {args.steps} steps after {args.warmup + 1} (warm-up and the FLOP-counted step); tokens/s counts "
        "every token through the network (all forwards of a step); MFU = FLOPs of a step / step time / the chip's dense "
        "bf16 peak. Streaming: batch 1, window 8, random weights; FPS after the first chunk (the paper: 30 FPS at 192x336).",
        "",
        "| row | result |",
        "|---|---|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a rehearsal of the script)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (configs/tiny, tiny streaming models)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 10, 2 with --tiny)")
    parser.add_argument("--write", type=Path, default=None, help="write the 'gpu' section of this markdown file")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.tiny else 10)
    args.warmup = 0 if args.tiny else 3
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA device; use --cpu for the CPU rehearsal")
    rows = measure(args)
    command = "bash benchmarks/gpu.sh" + (" --cpu" if args.cpu else "") + (" --tiny" if args.tiny else "")
    body = report(rows, args, command)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(write_section(args.write, "gpu", body) if args.write else body)


if __name__ == "__main__":
    main()
