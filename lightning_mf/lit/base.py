"""FlowModule: what every training stage shares (codecs, net, EMA, optimizer, clipping, conditioning, prediction)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightning_mf.batch import AVBatch, Cond
from lightning_mf.data.media import write_clip
from lightning_mf.flow import grid
from lightning_mf.models.tower import Tower, TowerConfig
from lightning_mf.models.transformer import AVTransformer, Tokens
from lightning_mf.sampling.samplers import integrate, nfe
from lightning_mf.sampling.streaming import stream
from lightning_mf.sequence import AVSequencer
from lightning_mf.spec import AVSpec

__all__ = ["CodecConfig", "FlowModule", "SamplerConfig", "paper_adamw", "predictions_dir"]


@dataclass(frozen=True)
class CodecConfig:
    """Token codecs (``lightning_mf.codecs``): PatchCodec and MelCodec, or your own (e.g. pretrained VAEs).

    Args:
        patch: video patch side in pixels.
        tubelet: video frames per token (divides ``spec.frames_per_chunk``).
        n_mels: mel bands of the audio tokens.
        n_fft: FFT size of the mel spectrogram.
        video: import path of another video codec class, built as ``cls(spec, **video_args)`` (interface:
            :mod:`lightning_mf.codecs.plugin`); ``patch`` and ``tubelet`` then do not apply.
        video_args: keyword arguments of that class (e.g. the path of its weights).
        audio: import path of another audio codec class (``n_mels`` and ``n_fft`` then do not apply).
        audio_args: keyword arguments of that class.
    """

    patch: int = 8
    tubelet: int = 2
    n_mels: int = 32
    n_fft: int = 1024
    video: str | None = None
    video_args: dict[str, Any] = field(default_factory=dict)
    audio: str | None = None
    audio_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SamplerConfig:
    """How ``generate``/``predict`` sample each chunk (METHOD §5), streamed with the KV cache.

    Args:
        mode: ``multi`` (the network told d = 0: Euler/Heun steps, the quality reference) or ``few`` (the same
            network told the jump d: 1-8 jumps, CFG distilled in by Mutual Forcing).
        steps: integration steps (Multi) or jumps (Few) per chunk.
        shift: timestep shift of the grid.
        cfg_scale: classifier-free guidance scale (1 = none; a CFG step costs 2 evaluations). ``None``: 3 in Multi
            mode, 1 in Few mode.
        cfg_above: guide only the steps whose noise level is above this (a guidance interval; 0 = every step). The
            last, low-noise steps' guidance makes most of guided sampling's drift (docs/benchmarks.md).
        heun: Heun (2nd order) instead of Euler for Multi steps (Few jumps are never corrected).
        jump_from: Multi mode: the last step jumps from this noise level to 0 (the clean estimate there), the other
            ``steps - 1`` cover ``[1, jump_from]`` (0 = Euler all the way; ``flow.grid``).
        window: chunks kept in the KV cache besides the first-frame sink (None = all).
        ctx_s: noise level at which generated chunks are written to the cache. None: the model's own
            (``FlowModule.ctx_s``, the level its history was trained at).
        seed: seed of the initial noise.
        use_ema: sample with the EMA weights.
    """

    mode: Literal["multi", "few"] = "multi"
    steps: int = 50
    shift: float = 3.0
    cfg_scale: float | None = None
    cfg_above: float = 0.0
    heun: bool = False
    jump_from: float = 0.0
    window: int | None = None
    ctx_s: float | None = None
    seed: int = 0
    use_ema: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("multi", "few"):
            raise ValueError(f"SamplerConfig.mode must be 'multi' or 'few', got {self.mode!r}")
        if not 0.0 <= self.cfg_above < 1.0:
            raise ValueError(f"SamplerConfig.cfg_above is a noise level in [0, 1) (1 never guides), got {self.cfg_above}")
        if self.ctx_s is not None and not 0.0 <= self.ctx_s < 1.0:
            raise ValueError(f"SamplerConfig.ctx_s is a noise level in [0, 1) (None: the model's), got {self.ctx_s}")
        self.grid()  # fails early on a bad jump_from (outside [0, 1), or set in Few mode)

    @property
    def guidance(self) -> float:
        """The CFG scale in effect (the mode's default when ``cfg_scale`` is None)."""
        if self.cfg_scale is not None:
            return self.cfg_scale
        return 3.0 if self.mode == "multi" else 1.0

    def grid(self) -> list[tuple[float, float, float]]:
        return grid(self.steps, self.shift, few=self.mode == "few", jump_from=self.jump_from)

    def nfe(self) -> int:
        """Network evaluations per chunk, CFG counted twice (METHOD §5); the cache writes add ``cache_nfe``."""
        return nfe(self.grid(), heun=self.heun, cfg=self.guidance != 1.0, cfg_above=self.cfg_above)

    def cache_nfe(self) -> int:
        """Forwards that write each chunk (and the prefix) to the KV cache: one, two with CFG, whose unconditional
        branch keeps its own cache (``sampling.streaming.stream``)."""
        return 2 if self.guidance != 1.0 else 1


def paper_adamw(params: Any) -> torch.optim.Optimizer:
    """AdamW with the paper's settings (METHOD §4): lr 5e-5, betas (0.9, 0.95), weight decay 0.02."""
    return torch.optim.AdamW(params, lr=5e-5, betas=(0.9, 0.95), weight_decay=0.02)


def predictions_dir(trainer: L.Trainer, configured: str | None) -> Path:
    """Where ``predict`` writes: the configured folder, else ``<trainer log dir>/predictions``."""
    return Path(configured or Path(trainer.log_dir or trainer.default_root_dir) / "predictions")


class FlowModule(L.LightningModule):
    """Base of every stage. Subclasses implement ``training_step``/``validation_step``.

    Args:
        modalities: the towers this model has.
        spec: rates and sizes (linked from ``data.spec`` by the CLI).
        tower: size of each tower.
        codec: token codecs.
        sampler: Multi-mode sampling used by ``predict``.
        optimizer: optimizer factory (``class_path``/``init_args`` in YAML); default: the paper's AdamW.
        scheduler: learning-rate scheduler factory of that optimizer, stepped every optimizer step (e.g.
            ``torch.optim.lr_scheduler.LinearLR`` as a warm-up); None = constant.
        grad_clip: gradient norm clip (None = off).
        ema_decay: decay of the weight EMA kept as a submodule (saved with checkpoints; None = off). It is reached
            after a warm-up: update ``n`` (from 0) uses ``min(ema_decay, (1 + n) / (10 + n))``, so the EMA forgets
            the weights it was copied from (a random init in stage 1) within tens of steps.
        cfg_dropout: probability of dropping the transcript of a training window (enables CFG).
        predict_dir: where ``predict`` writes mp4/wav files (default: ``<trainer log dir>/predictions``).
        max_nonfinite_steps: optimizer steps whose gradients are NaN/Inf are skipped (no update, no EMA) and
            counted (``train/nonfinite_steps``); more than this many stop the run with an error (None: never).
        activation_checkpointing: recompute each transformer layer in backward instead of keeping its
            activations (less memory, about one more forward of compute).
        ctx_s: noise level at which this model's generated chunks are written to the KV cache when it streams
            (``generate``, ``evaluate``, predict; Mutual Forcing's rollouts too), unless a sampler names its own. Saved
            with the checkpoint: it belongs to the weights, which must have been trained on a history noised that much
            (``NoiseSchedule.context_noise``, or stage 3's rollouts). Written clean, errors in the model's last,
            low-noise steps become history and pile up; at 0.3 on the tiny preset the drift halves (docs/benchmarks.md).
    """

    def __init__(
        self,
        modalities: tuple[str, ...],
        spec: AVSpec = AVSpec(),
        tower: TowerConfig = TowerConfig(),
        codec: CodecConfig = CodecConfig(),
        sampler: SamplerConfig = SamplerConfig(),
        optimizer: OptimizerCallable = paper_adamw,
        scheduler: LRSchedulerCallable | None = None,
        grad_clip: float | None = 0.5,
        ema_decay: float | None = 0.999,
        cfg_dropout: float = 0.1,
        predict_dir: str | None = None,
        max_nonfinite_steps: int | None = 20,
        activation_checkpointing: bool = False,
        ctx_s: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= ctx_s < 1.0:
            raise ValueError(f"model.ctx_s is a noise level in [0, 1), got {ctx_s}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"model.ema_decay must be in (0, 1) or null, got {ema_decay}")
        if not 0.0 <= cfg_dropout < 1.0:
            raise ValueError(f"model.cfg_dropout must be in [0, 1), got {cfg_dropout}")
        self.spec, self.tower_config, self.codec_config, self.sampler = spec, tower, codec, sampler
        self.optimizer, self.grad_clip, self.ema_decay, self.cfg_dropout = optimizer, grad_clip, ema_decay, cfg_dropout
        self.scheduler, self.ctx_s = scheduler, ctx_s
        self.predict_dir, self.max_nonfinite_steps = predict_dir, max_nonfinite_steps
        self.seq = AVSequencer(spec, modalities, **asdict(codec))
        wide = {m: self.seq.token_dim(m) for m in self.seq.modalities if self.seq.token_dim(m) > tower.dim}
        if wide:
            rank_zero_warn(
                f"tokens of {wide} values are wider than the tower (tower.dim={tower.dim}): a velocity (eps - x0) must "
                "carry the token's noise through the tower, so such a model cannot learn to denoise; use a smaller "
                "codec.patch / codec.tubelet or a wider tower"
            )
        towers = {m: Tower(self.seq.token_dim(m), tower, self.seq.track_offsets(m), modality=m) for m in self.seq.modalities}
        self.net = AVTransformer(towers, spec.chunk_seconds)
        self.net.activation_checkpointing = activation_checkpointing
        self.ema = copy.deepcopy(self.net).requires_grad_(False) if ema_decay is not None else None
        self.run_seed: int | None = None  # fixed at the first fit start; kept in checkpoints
        self.nonfinite_steps = 0
        self.ema_updates = 0  # EMA updates so far (the warm-up's step count); kept in checkpoints
        self._skipped_step = False

    def networks(self) -> list[nn.Module]:
        """The networks this stage holds (sharded one by one under FSDP)."""
        return [n for n in (self.net, self.ema) if n is not None]

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (FSDP2): shard every network over the data-parallel mesh.

        Each network is one FSDP unit: a layer of the joint model uses both towers' blocks in two phases (their
        q/k/v, then fused attention and the rest), so blocks are not separate ``forward`` calls FSDP could hook.
        """
        mesh = self.device_mesh
        if mesh is None:
            return
        if mesh["tensor_parallel"].size() != 1:
            raise ValueError(
                "lightning-mf shards data-parallel only: set trainer.strategy.init_args.tensor_parallel_size: 1 "
                f"(got a {mesh['tensor_parallel'].size()}-way tensor-parallel mesh)"
            )
        from torch.distributed.fsdp import fully_shard

        for network in self.networks():
            fully_shard(network, mesh=mesh["data_parallel"])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the class (so tools can rebuild any stage from the file alone), the run's seed and fault count."""
        checkpoint["lightning_mf_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["lightning_mf_state"] = {
            "run_seed": self.run_seed, "nonfinite_steps": self.nonfinite_steps, "batch_layout": self.batch_layout(),
            "ema_updates": self.ema_updates,
        }

    def batch_layout(self) -> list[int] | None:
        """``[ranks, micro-batches per step]``: how the global batch is split (None outside a Trainer)."""
        return [self.trainer.world_size, self.accumulation()] if self._trainer is not None else None

    def check_shapes(self, hparams: dict[str, Any], source: str) -> None:
        """Raise if the hyper-parameters of a checkpoint (from ``source``) give networks of another shape."""
        for name, mine in (("spec", self.spec), ("tower", self.tower_config), ("codec", self.codec_config)):
            theirs = hparams.get(name, mine)
            if isinstance(theirs, dict):  # LightningCLI stores dataclass arguments as dicts
                theirs = type(mine)(**theirs)
            if isinstance(mine, TowerConfig) and theirs.network() == mine.network():
                continue
            if theirs != mine:
                raise ValueError(f"{source} was trained with {name}={theirs}, this model has {name}={mine}; make them equal")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, before any compute, a checkpoint of another stage or shape (e.g. ``fit --ckpt_path`` of the wrong
        run); restore the run's seed and fault count."""
        mine, theirs = f"{type(self).__module__}.{type(self).__qualname__}", checkpoint.get("lightning_mf_class")
        if theirs is not None and theirs != mine:
            raise ValueError(
                f"the checkpoint was written by {theirs}, this run is {mine}: resume a run with its own stage's "
                "checkpoint; to start a stage from an earlier one, use its init options (video_ckpt/audio_ckpt, init_ckpt)"
            )
        self.check_shapes(checkpoint.get("hyper_parameters", {}), "the checkpoint")
        state = checkpoint.get("lightning_mf_state", {})
        self.run_seed, self.nonfinite_steps = state.get("run_seed"), state.get("nonfinite_steps", 0)
        self.ema_updates = state.get("ema_updates", checkpoint.get("global_step", 0))  # older files: one per step
        theirs, mine = state.get("batch_layout"), self.batch_layout()
        if theirs and mine and list(theirs) != mine and self.trainer.state.fn == "fit":
            rank_zero_warn(
                f"resuming a run written by {theirs[0]} rank(s) x {theirs[1]} micro-batch(es) per step with "
                f"{mine[0]} x {mine[1]}: the weights, optimizers, step and seeds are restored, but the data position "
                "counts the old layout's batches, so the data order differs from an uninterrupted run (exact resume "
                "needs the same layout)"
            )

    # --------------------------------------------------------------------------------------- randomness

    def on_fit_start(self) -> None:
        if self.run_seed is None:  # seed_everything's seed (random unless configured), rank 0's, fixed for the run
            seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed() % 2**31))
            self.run_seed = int(self.trainer.strategy.broadcast(seed, src=0))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed torch's RNG from (run seed, step, micro-batch group): the noise of a step does not depend on what
        ran before it, so a resumed run replays it exactly, and a global batch split into ranks x micro-batches
        draws the same noise however it is split."""
        torch.manual_seed(self.step_seed(self.micro_group(batch_idx)))
        self._skipped_step = False

    def accumulation(self) -> int:
        """Micro-batches per optimizer step."""
        return self.trainer.accumulate_grad_batches

    def micro_group(self, batch_idx: int) -> int:
        """Index of this micro-batch in the global batch: ``rank * accumulation + micro``."""
        return self.global_rank * self.accumulation() + batch_idx % self.accumulation()

    def step_seed(self, group: int, stream: int = 0) -> int:
        """The seed of one random stream of micro-batch ``group`` at the current step."""
        return ((((self.run_seed or 0) * 1_000_003 + self.global_step) * 10_007 + group) * 101 + stream) % 2**63

    # --------------------------------------------------------------------------------------- optimisation

    def configure_optimizers(self) -> dict[str, Any]:
        return self.optimization(self.net)

    def optimization(self, net: nn.Module) -> dict[str, Any]:
        """The optimizer of ``net`` and, if configured, its per-step learning-rate scheduler (Lightning's dict)."""
        optimizer = self.optimizer(net.parameters())
        if self.scheduler is None:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler(optimizer), "interval": "step"}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None) -> None:
        """Every stage's last word before an optimizer step (manual-optimisation stages call it themselves): the NaN/Inf
        guard and the module's ``grad_clip``, from one gradient norm. Under fp16 loss scaling the GradScaler skips
        overflowing steps itself, so Lightning's own clipping runs unchanged."""
        clip = gradient_clip_val if gradient_clip_val is not None else self.grad_clip
        algorithm = gradient_clip_algorithm or "norm"
        if algorithm != "norm" or getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            if clip:
                self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm=algorithm)
            return
        self._skipped_step |= not self.clip_or_skip(optimizer, clip)

    def clip_or_skip(self, optimizer: torch.optim.Optimizer, clip: float | None) -> bool:
        """Clip the gradients of ``optimizer`` to norm ``clip``, or, if any is NaN/Inf, drop them all (its step then
        changes nothing), count it, and stop after ``max_nonfinite_steps``. Returns whether they were finite.

        Every rank decides alike: DDP/FSDP average gradients across ranks before this runs, so a NaN anywhere is
        a NaN everywhere, and the sharded norm is all-reduced.
        """
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return True
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])  # a DTensor under FSDP2
        if bool(torch.isfinite(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)):
            if clip:
                torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
            return True
        for p in params:
            p.grad = None
        self.nonfinite_steps += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True, on_epoch=False)
        limit = self.max_nonfinite_steps
        if limit is not None and self.nonfinite_steps > limit:
            raise RuntimeError(
                f"{self.nonfinite_steps} optimizer steps had NaN/Inf gradients (the last at step {self.global_step}), "
                f"more than model.max_nonfinite_steps={limit}: stopping. Lower the learning rate, check the data, or "
                "raise the limit"
            )
        rank_zero_warn(f"step {self.global_step}: NaN/Inf gradients, step skipped ({self.nonfinite_steps} so far)")
        return False

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """EMA right after each step of the shared network (before callbacks such as checkpointing see it), unless
        the step was skipped; not after micro-batches of an accumulation (no step happens there)."""
        if not self._skipped_step:
            self.update_ema()

    def ema_decay_now(self) -> float:
        """The decay of the next EMA update: ``ema_decay`` after a warm-up of ``(1 + n) / (10 + n)``."""
        n = self.ema_updates
        return min(self.ema_decay, (1 + n) / (10 + n))

    def update_ema(self) -> None:
        with torch.no_grad():
            if self.ema is not None:
                weight = 1.0 - self.ema_decay_now()
                torch._foreach_lerp_(list(self.ema.parameters()), list(self.net.parameters()), weight)
                self.ema_updates += 1

    # --------------------------------------------------------------------------------------- conditioning

    def condition(self, batch: AVBatch, dropout: float = 0.0) -> Cond:
        """The windows' transcripts as a :class:`Cond`, each dropped with probability ``dropout`` (CFG)."""
        cond = Cond.from_transcripts([m["transcript"] for m in batch.meta], self.tower_config.vocab_size, self.device)
        if dropout > 0:
            cond = cond.drop(torch.rand(batch.size, device=self.device) >= dropout)
        return cond

    def prefix(self, batch: AVBatch) -> dict[str, Tokens]:
        """The first frame of each window as the clean prefix chunk (video towers only)."""
        return self.seq.prefix(batch.video[:, 0])

    # --------------------------------------------------------------------------------------- sampling

    def stream_chunks(
        self, prefix: dict[str, Tokens] | None, cond: Cond | Callable[[int], Cond] | None, batch: int, num_chunks: int,
        sampler: SamplerConfig | None = None, generator: torch.Generator | None = None,
        substitute: Callable[[int, dict[str, Tensor]], dict[str, Tensor]] | None = None,
    ) -> Iterator[dict[str, Tensor]]:
        """Chunk tokens ``{m: (B, n, C)}`` streamed in the sampler's mode (default: the module's ``sampler``) with its
        weights (EMA or online), grid, guidance, window and context level; noise from ``generator`` (default: one
        seeded with ``sampler.seed``); ``substitute``: see :func:`~lightning_mf.sampling.streaming.stream`."""
        sampler = sampler or self.sampler
        net = self.ema if sampler.use_ema and self.ema is not None else self.net
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(sampler.seed)
        return stream(
            net, self.seq, partial(integrate, grid=sampler.grid(), heun=sampler.heun), num_chunks=num_chunks, batch=batch,
            prefix=prefix, cond=cond, cfg_scale=sampler.guidance, cfg_above=sampler.cfg_above, window=sampler.window,
            ctx_s=self.history_level(sampler), generator=generator, device=self.device, substitute=substitute,
        )

    def history_level(self, sampler: SamplerConfig) -> float:
        """The noise level at which ``sampler`` writes generated chunks to the cache: its own ``ctx_s``, else the
        model's. So the samplers that tools build from a mode string (``evaluate``, ``generate``) stream the model on
        the history it was trained to read."""
        return self.ctx_s if sampler.ctx_s is None else sampler.ctx_s

    def generate(
        self, batch: AVBatch, num_chunks: int | None = None, sampler: SamplerConfig | None = None, progress: str | None = None,
    ) -> dict[str, Tensor]:
        """Stream ``num_chunks`` chunks (default: the window's) conditioned on the batch's first frames and
        transcripts, in the sampler's mode (default: the module's ``sampler``); returns media ``{"video": (B, T, 3, H, W) uint8, "audio": (B, S)}``.
        ``progress``: the label of a progress bar over chunks (none by default)."""
        chunks = num_chunks or self.seq.num_chunks(batch)
        stream = self.stream_chunks(self.prefix(batch), self.condition(batch), batch.size, chunks, sampler)
        pieces = list(tqdm(stream, total=chunks, desc=progress, unit="chunk", disable=progress is None))
        tokens = {m: torch.cat([p[m] for p in pieces], dim=1) for m in self.seq.modalities}
        return self.seq.decode(tokens)

    def predict_step(self, batch: AVBatch, batch_idx: int) -> list[str]:
        """Write one mp4 (with the audio track when there is audio) and one wav per window; return the paths."""
        media = self.generate(batch)
        root = predictions_dir(self.trainer, self.predict_dir)
        written = []
        for i, key in enumerate(batch.keys):
            stem = root / f"{key}-b{batch_idx}"
            written += write_clip({m: v[i] for m, v in media.items()}, self.spec, Path(f"{stem}.mp4"))
        return written
