"""Stage 3, Mutual Forcing (METHOD §4.3), and the paper's baselines as configurations of the same step.

One training step on real windows X[1..L] (L drawn per batch):

1. *Few mode writes the history*: chunks 1..L-1 are generated under ``no_grad`` by :func:`stream`, the inference
   code path (KV cache, few-step grid, first-frame sink, rolling window). Alternatives: ``sdedit`` (each chunk
   Few-sampled from its noised real version) and ``real`` (teacher forcing).
2. *Multi mode learns the real flow on that history*: teacher-forcing flow matching (d = 0) with the history as
   the clean context, every chunk at once (:class:`TeacherForced`: noisy chunk k sees history chunks < k, exactly
   what streaming gives it).
3. *Multi teaches Few*: ShortCut targets (two half jumps; the Multi velocity, guided at ``distill_cfg``, at the
   smallest step) on the few-step grids' (s, d) pairs, and DMD on a Few-mode sample of every chunk (gradient through
   its last jump only) with the model's own Multi mode (guided likewise) as real score and an online fake score
   trained by flow matching on the detached samples (its own optimizer). With a rolled-out history the DMD samples
   are the rollout's own chunks (it streams chunk L too and keeps each chunk's state before its last jump), as in
   Self-Forcing: only the last jump is run again, with gradient, instead of sampling every chunk afresh.

``loss = fm_weight * L_fm + sd_weight * (sc_weight * L_sc + dmd_weight * L_dmd) + anchor_weight * L_anchor``, gradient
clipping, EMA. ``L_anchor`` (off by default) holds Multi mode to the frozen ``init_ckpt`` copy on the same history.
Baselines (``configs/tiny/baseline_*.yaml``): ShortCut with teacher forcing (history real, no DMD), DMD with
teacher forcing (history real, DMD only, frozen stage-2 real score), DMD with self-forcing (Self-Forcing: history
rolled out, DMD only, frozen stage-2 real score, no real-data loss).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_mf.batch import AVBatch, Cond
from lightning_mf.flow import AV, grid, interpolate, x0_from_velocity
from lightning_mf.lit.base import SamplerConfig, paper_adamw
from lightning_mf.lit.teacher_forcing import RUNTIME_OPTIONS, TeacherForcing
from lightning_mf.models.lora import LowRankDelta
from lightning_mf.models.transformer import AVTransformer, Tokens
from lightning_mf.objectives.flow_matching import TeacherForced, teacher_forcing_flow_matching
from lightning_mf.objectives.self_distillation import dmd_loss, shortcut_pairs, shortcut_target
from lightning_mf.sampling.samplers import Grid, guided, integrate
from lightning_mf.sampling.streaming import stream

__all__ = ["MutualForcing"]

FakeBatch = tuple[int, AV, dict[str, Tokens], Cond, AV, AV | None]  # group, sample, prefix, cond, history, levels


@dataclass
class FewSamples:
    """Few-mode samples of chunks 1..L that the rollout streamed: the grid it used, and every chunk's state before
    its last jump ``{m: (B, L * n, C)}``, from which DMD takes that jump again with gradient."""

    jumps: Grid
    before_last: AV


class MutualForcing(TeacherForcing):
    """Mutual Forcing fine-tuning of a joint (or single-tower) model (manual optimisation, two optimizers).

    Args:
        init_ckpt: checkpoint (stage 2, or stage 1 for a single tower) whose network starts the shared model, its
            EMA, the fake score and the frozen real score. Not reloaded when resuming.
        history: what the context of each chunk is: ``rollout`` (Few mode, from the real first frame),
            ``sdedit`` (Few mode from the noised real chunk) or ``real`` (teacher forcing).
        sdedit_level: noise level that ``sdedit`` starts from (snapped down to a level of the rollout grid).
        chunks: ``[min, max]`` chunks per training step (drawn per batch, prefix of the window); None = the window.
        rollout_steps: Few-mode jumps of the history rollout (one drawn per step).
        shortcut_steps: few-step grids whose (s, d) pairs ShortCut trains.
        dmd_steps: Few-mode jumps of the DMD sample (one drawn per step).
        dmd_sample: where the DMD sample of each chunk comes from: ``rollout`` takes the rollout's own chunks
            whenever the history is rolled out with the grid DMD drew (the rollout then streams chunk L as well),
            else samples afresh; ``fresh`` always samples every chunk afresh from noise on the same history (3
            more no-grad passes over the window at 4 jumps; the same distribution, kept to measure the difference).
        few_shift: timestep shift of the few-step grids (use the same at inference).
        min_step: ShortCut recursion stops at steps this small; their target is the (guided) Multi velocity.
        distill_cfg: CFG scale of the Multi-mode teacher (ShortCut base and DMD real score). Default 1 (no
            guidance): with the shared model as teacher, a scale above 1 is a feedback loop (each step pulls the
            conditional velocity toward its guided version, which the next step guides again); on the tiny
            preset Multi mode collapsed within 80 steps at 3 (the paper's 5 is at scale). Warned about.
        fm_weight, sd_weight, sc_weight, dmd_weight: ``fm * L_fm + sd * (sc * L_sc + dmd * L_dmd)``.
        anchor_weight: weight of ``L_anchor``, the squared difference between Multi mode's velocity (d = 0) and the
            frozen ``init_ckpt`` copy's on real chunks noised to uniform levels, on the step's history. Self-distillation
            moves the weights both modes share; this holds Multi mode where stage 2 left it (docs/benchmarks.md, "What
            stage 3's drift is"). 0 = off.
        teacher: whose Multi mode teaches Few mode (ShortCut's base rows and DMD's real score): the ``shared``
            model itself, its ``ema`` (a slower copy of itself: still no external teacher), or a ``frozen`` copy of
            ``init_ckpt``. ShortCut's half jumps are always the shared model's own. None = ``shared``.
        real_score: former name of ``teacher`` (``shared`` | ``frozen``), read from older configs and checkpoints;
            refused when it disagrees with ``teacher`` (an old config merged with a new option must not pick silently).
        fake_score: the online fake score: a full ``copy`` of the shared model, or ``lora``: the current shared
            weights plus trainable low-rank updates (rank ``fake_rank``) of every block's linear layers.
        fake_rank: rank of the ``lora`` fake score.
        fake_optimizer: optimizer factory of the fake score.
        fake_updates: fake-score steps per training step.
        accumulate: micro-batches per optimizer step (Lightning's ``accumulate_grad_batches`` is for automatic
            optimisation only). The fake score trains on all of a step's samples after the shared model's step.
        dmd_levels: range of the re-noising level of DMD samples.
        window: KV-cache window in chunks used by the rollout and the training attention (None = all).
        ctx_s: noise level at which rolled-out chunks are written to the cache, and generated ones when it streams.
        control_seed: seed of the choices that change control flow (chunks, grids, ShortCut pairs): drawn from
            ``(control_seed, global_step)``, so every rank makes the same ones without communicating.
        ema_decay: EMA of the shared weights (paper: 0.99 in this stage).
        sampler: how ``predict``/``generate`` sample (default Few mode, 4 jumps).
        **kwargs: the options of :class:`TeacherForcing` (noise, audio_weight, motion_weight, modalities) and
            :class:`~lightning_mf.lit.base.FlowModule` (spec, tower, codec, optimizer, grad_clip, cfg_dropout, ...).
    """

    def __init__(
        self,
        init_ckpt: str | None = None,
        history: Literal["rollout", "sdedit", "real"] = "rollout",
        sdedit_level: float = 0.5,
        chunks: tuple[int, int] | None = None,
        rollout_steps: tuple[int, ...] = (4,),
        shortcut_steps: tuple[int, ...] = (1, 2, 4, 8),
        dmd_steps: tuple[int, ...] = (4,),
        dmd_sample: Literal["rollout", "fresh"] = "rollout",
        few_shift: float = 3.0,
        min_step: float = 1 / 32,
        distill_cfg: float = 1.0,
        fm_weight: float = 1.0,
        sd_weight: float = 1.0,
        anchor_weight: float = 0.0,
        sc_weight: float = 2 / 3,
        dmd_weight: float = 1 / 3,
        teacher: Literal["shared", "ema", "frozen"] | None = None,
        real_score: Literal["shared", "frozen"] | None = None,
        fake_score: Literal["copy", "lora"] = "copy",
        fake_rank: int = 8,
        fake_optimizer: OptimizerCallable = paper_adamw,
        fake_updates: int = 1,
        accumulate: int = 1,
        dmd_levels: tuple[float, float] = (0.02, 0.98),
        window: int | None = None,
        ctx_s: float = 0.0,
        control_seed: int = 0,
        ema_decay: float | None = 0.99,
        sampler: SamplerConfig = SamplerConfig(mode="few", steps=4),
        **kwargs: Any,
    ) -> None:
        super().__init__(ema_decay=ema_decay, sampler=sampler, ctx_s=ctx_s, **kwargs)
        self.automatic_optimization = False
        if history not in ("rollout", "sdedit", "real"):
            raise ValueError(f"model.history must be 'rollout', 'sdedit' or 'real', got {history!r}")
        if fake_score not in ("copy", "lora"):
            raise ValueError(f"model.fake_score must be 'copy' or 'lora', got {fake_score!r}")
        if dmd_sample not in ("rollout", "fresh"):
            raise ValueError(f"model.dmd_sample must be 'rollout' or 'fresh', got {dmd_sample!r}")
        if real_score is not None:  # older configs and checkpoints: the same networks under the old name
            if real_score not in ("shared", "frozen"):
                raise ValueError(f"model.real_score must be 'shared' or 'frozen', got {real_score!r}")
            if teacher is not None and teacher != real_score:
                raise ValueError(
                    f"model.teacher={teacher!r} and model.real_score={real_score!r} (its former name) disagree; "
                    "give teacher only"
                )
            teacher = real_score
        teacher = teacher or "shared"
        if teacher not in ("shared", "ema", "frozen"):
            raise ValueError(f"model.teacher must be 'shared', 'ema' or 'frozen', got {teacher!r}")
        if teacher == "ema" and ema_decay is None:
            raise ValueError("model.teacher: ema needs model.ema_decay (the EMA is the teacher)")
        if self.tower_config.first_frame_dropout:
            raise ValueError(
                "model.tower.first_frame_dropout is for stages 1-2: stage 3 trains on Few-mode rollouts that must see "
                "the first frame as streaming does; set it to 0"
            )
        if self.delayed_history:
            raise ValueError("model.delayed_history is for stages 1-2: stage 3 trains on its own rollouts as history; set it to 0")
        if chunks is not None and not 1 <= chunks[0] <= chunks[1]:
            raise ValueError(f"model.chunks must be [min, max] with 1 <= min <= max, got {list(chunks)}")
        for name, steps in (("rollout_steps", rollout_steps), ("shortcut_steps", shortcut_steps), ("dmd_steps", dmd_steps)):
            if not steps or any(n < 1 for n in steps):
                raise ValueError(f"model.{name} must list jump counts >= 1, got {list(steps)}")
        if min(fm_weight, sd_weight, sc_weight, dmd_weight, anchor_weight) < 0 or fake_updates < 1 or accumulate < 1:
            raise ValueError("model loss weights must be >= 0, fake_updates and accumulate >= 1")
        if not 0.0 < dmd_levels[0] <= dmd_levels[1] < 1.0:
            raise ValueError(f"model.dmd_levels must satisfy 0 < low <= high < 1, got {list(dmd_levels)}")
        self.init_ckpt, self.history_source, self.sdedit_level, self.chunks = init_ckpt, history, sdedit_level, chunks
        self.rollout_steps, self.dmd_steps, self.dmd_sample, self.few_shift = tuple(rollout_steps), tuple(dmd_steps), dmd_sample, few_shift
        self.distill_cfg, self.teacher_source, self.fake_optimizer, self.fake_updates = distill_cfg, teacher, fake_optimizer, fake_updates
        self.accumulate, self._accumulating = accumulate, False
        self._fake_batches: list[FakeBatch] = []  # this step's fake-score data
        self.weights = {"fm": fm_weight, "sc": sd_weight * sc_weight, "dmd": sd_weight * dmd_weight, "anchor": anchor_weight}
        self.dmd_levels, self.window, self.control_seed = dmd_levels, window, control_seed
        self.register_buffer("pairs", shortcut_pairs(tuple(shortcut_steps), few_shift, min_step).float(), persistent=False)
        uses_dmd = self.weights["dmd"] > 0
        if distill_cfg != 1.0 and teacher != "frozen" and (self.weights["sc"] > 0 or uses_dmd):
            rank_zero_warn(
                f"model.distill_cfg={distill_cfg:g} with the shared model as teacher: every step pulls Multi mode's "
                "conditional velocity toward its own guided version, which the next step guides again. On the tiny "
                "preset this collapsed Multi mode within 80 steps at 3 (docs/benchmarks.md, 'The guided teacher'); "
                "watch Multi mode's evaluation, or use 1 (or teacher: frozen)."
            )
        self.fake: nn.Module | None = None
        if uses_dmd:
            self.fake = copy.deepcopy(self.net) if fake_score == "copy" else LowRankDelta(self.net, rank=fake_rank)
        distils = uses_dmd or self.weights["sc"] > 0
        frozen = (distils and teacher == "frozen") or anchor_weight > 0  # the frozen copy: teacher and/or anchor
        self.teacher = copy.deepcopy(self.net).requires_grad_(False) if frozen else None
        self.save_hyperparameters(ignore=RUNTIME_OPTIONS)

    def setup(self, stage: str) -> None:
        """Start every network from ``init_ckpt`` on a fresh fit (a resumed fit restores them all), with the step-size
        path made inert again (:meth:`~lightning_mf.models.Tower.reset_step_size`: stages 1-2 train it as a constant
        at ``d = 0``), so Few mode starts as an Euler jump of Multi mode and Multi mode is the checkpoint's."""
        if stage == "fit":
            self.warn_if_history_level_untrained()
        resuming = self._trainer is not None and self._trainer.ckpt_path is not None
        if stage == "fit" and self.init_ckpt is not None and not resuming:
            self.net.load_state_dict(self.read_net(self.init_ckpt, "model.init_args.init_ckpt", self.seq.modalities))
            for tower in self.net.towers.values():
                tower.reset_step_size()
            for net in (self.ema, self.fake, self.teacher):
                if isinstance(net, AVTransformer):  # a LowRankDelta fake score follows self.net by itself
                    net.load_state_dict(self.net.state_dict())

    @property
    def trains_on_written_history(self) -> bool:
        return self.history_source == "rollout"

    def networks(self) -> list[nn.Module]:
        if isinstance(self.fake, LowRankDelta):
            if self.device_mesh is not None:
                raise ValueError("model.fake_score: lora is not supported under FSDP (ModelParallelStrategy); use copy")
            return super().networks() + [n for n in (self.teacher,) if n is not None]
        return super().networks() + [n for n in (self.fake, self.teacher) if n is not None]

    def configure_optimizers(self) -> list[dict[str, Any]]:
        optimizers = [self.optimization(self.net)]
        if self.fake is not None:
            optimizers.append({"optimizer": self.fake_optimizer(self.fake.parameters())})
        return optimizers

    # ------------------------------------------------------------------------------------------- the step

    def control(self, step: int | None = None) -> torch.Generator:
        """The generator of control-flow choices at ``step`` (default: now): the same on every rank, different at
        every step, and independent of the global RNG."""
        return torch.Generator().manual_seed(self.control_seed * 1_000_003 + (self.global_step if step is None else step))

    def training_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        ctl = self.control()
        x0, count = self._crop(self.seq.encode(batch), self.seq.num_chunks(batch), ctl)
        prefix, cond = self.prefix(batch), self.condition(batch)
        history, levels, made = self.rollout(x0, count, prefix, cond, ctl)  # {m: (B, (L-1) n, C)}, no grad
        losses: dict[str, Tensor] = {}
        logs: dict[str, Tensor] = {}
        if self.weights["fm"] > 0:
            fm = teacher_forcing_flow_matching(
                self.net, self.seq, x0, prefix, self.condition(batch, self.cfg_dropout), self.noise, history, self.window, levels,
                self.motion_weight,
            )
            losses["fm"] = fm.loss({"audio": self.audio_weight})
            logs |= {f"train/fm_{m}": e.mean() for m, e in fm.errors.items()}
        few = TeacherForced(self.net, self.seq, history, prefix, cond, levels, self.window)
        if self.weights["sc"] > 0:
            losses["sc"] = self._weighted(self.shortcut(few, x0, ctl))
        if self.weights["anchor"] > 0:
            losses["anchor"] = self._weighted(self.anchor(few, x0))
        sample = None
        if self.weights["dmd"] > 0:
            dmd, sample = self.dmd(few, x0, ctl, made)
            losses["dmd"] = self._weighted(dmd)
        loss = sum(self.weights[name] * value for name, value in losses.items())

        optimizers = self.optimizers()
        optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
        micro = batch_idx % self.accumulate
        if micro == 0:
            optimizer.zero_grad()
        self.manual_backward(loss / self.accumulate)
        if sample is not None:
            self._fake_batches.append((self.micro_group(batch_idx), sample, prefix, cond, history, levels))
        self._accumulating = micro < self.accumulate - 1
        if not self._accumulating:
            self.configure_gradient_clipping(optimizer)
            optimizer.step()
            self.after_optimizer_step()
            if self.scheduler is not None:  # manual optimisation: Lightning does not step schedulers
                scheduler = self.lr_schedulers()
                (scheduler[0] if isinstance(scheduler, list) else scheduler).step()
            if self._fake_batches:
                logs["train/fake_fm"] = self.train_fake(self.optimizers(use_pl_optimizer=False)[1], self._fake_batches)
            self._fake_batches = []

        logs |= {f"train/{name}": value.detach() for name, value in losses.items()}
        logs["train/chunks"] = torch.tensor(float(count))
        self.log_dict(logs, on_step=True, batch_size=batch.size)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, batch_size=batch.size)
        return loss.detach()

    def _crop(self, x0: AV, total: int, ctl: torch.Generator) -> tuple[AV, int]:
        """The first L chunks of the window, L drawn in ``chunks`` (flexible lengths)."""
        low, high = self.chunks or (total, total)
        if high > total:
            raise ValueError(f"model.chunks max {high} exceeds the {total} chunks of a training window (data.window_chunks)")
        count = int(torch.randint(low, high + 1, (1,), generator=ctl))
        return {m: x[:, : count * self.seq.tokens_per_chunk(m)] for m, x in x0.items()}, count

    def _weighted(self, losses: dict[str, Tensor]) -> Tensor:
        return sum((self.audio_weight if m == "audio" else 1.0) * value for m, value in losses.items())

    # ------------------------------------------------------------------------------------------- history

    def rollout(
        self, x0: AV, count: int, prefix: dict[str, Tokens], cond: Cond, ctl: torch.Generator
    ) -> tuple[AV, AV | None, FewSamples | None]:
        """History chunks 1..L-1: real (teacher forcing), or streamed in Few mode exactly as at inference; returned
        as the streaming cache saw them (noised to ``ctx_s``) with their levels (None: clean). A rollout that DMD may
        reuse (:meth:`reuses_rollout`) streams chunk L too and returns the Few samples of chunks 1..L (else None)."""
        with torch.no_grad():
            made = count - 1
            real = {m: x[:, : made * self.seq.tokens_per_chunk(m)] for m, x in x0.items()}
            if self.history_source == "real" or (made == 0 and not self.reuses_rollout()):
                return real, None, None
            steps = self._choose(self.rollout_steps, ctl)
            extend = self.reuses_rollout() and steps in self.dmd_steps  # DMD may draw this grid: stream chunk L too
            if made == 0 and not extend:
                return real, None, None
            jumps = grid(steps, self.few_shift, few=True)
            before_last: list[AV] = []
            if self.history_source == "rollout":

                def sample(velocity: Any, noise: AV) -> AV:
                    states = [noise]
                    x = integrate(velocity, noise, jumps, callback=lambda i, s, state: states.append(state))
                    before_last.append(states[-2])
                    return x

            else:  # sdedit: start each chunk from its real tokens noised to the first grid level <= sdedit_level
                tail = [j for j in jumps if j[0] <= self.sdedit_level]
                start = tail[0][0] if tail else 0.0
                chunk = iter(range(made))

                def sample(velocity: Any, noise: AV) -> AV:
                    k = next(chunk)
                    x = {m: interpolate(self._chunk(x0, m, k), noise[m], start) for m in noise}
                    return integrate(velocity, x, tail)

            batch = next(iter(x0.values())).shape[0]
            written: list[AV] = []
            for _ in stream(
                self.net, self.seq, sample, num_chunks=made + extend, batch=batch, prefix=prefix, cond=cond,
                window=self.window, ctx_s=self.ctx_s, device=self.device, on_write=written.append,
            ):  # fmt: skip
                pass
            samples = FewSamples(jumps, _cat(before_last)) if extend else None
            if made == 0:
                return real, None, samples
            history = _cat(written[:made])
            levels = {m: torch.full(h.shape[:2], self.ctx_s, device=h.device) for m, h in history.items()} if self.ctx_s > 0 else None
            return history, levels, samples

    def reuses_rollout(self) -> bool:
        """Whether DMD can take its samples from the rollout (a rolled-out history, DMD on, ``dmd_sample: rollout``)."""
        return self.history_source == "rollout" and self.weights["dmd"] > 0 and self.dmd_sample == "rollout"

    def _chunk(self, x: AV, modality: str, k: int) -> Tensor:
        n = self.seq.tokens_per_chunk(modality)
        return x[modality][:, k * n : (k + 1) * n]

    @staticmethod
    def _choose(options: tuple[int, ...], ctl: torch.Generator) -> int:
        return options[int(torch.randint(len(options), (1,), generator=ctl))]

    # ------------------------------------------------------------------------------------------- self-distillation

    def _teacher(self, few: TeacherForced) -> TeacherForced | None:
        """The teaching Multi mode on the same history: None when it is the shared model itself."""
        net = {"shared": None, "ema": self.ema, "frozen": self.teacher}[self.teacher_source]
        return few.using(net=net) if net is not None else None

    def _multi_cfg(self, velocity: TeacherForced) -> Any:
        """Multi-mode velocity with the distillation CFG (DMD's real score; ShortCut guides its base rows itself)."""
        return guided(velocity, velocity.using(cond=velocity.cond.unconditional()), self.distill_cfg)

    def shortcut(self, few: TeacherForced, x0: AV, ctl: torch.Generator) -> dict[str, Tensor]:
        """ShortCut self-consistency on real chunks noised to per-sample (s, d) pairs of the few-step grids."""
        batch = next(iter(x0.values())).shape[0]
        rows = self.pairs[torch.multinomial(self.pairs[:, 3].cpu(), batch, replacement=True, generator=ctl).to(self.pairs.device)]
        s, d, base = rows[:, 0], rows[:, 1], rows[:, 2].bool()  # (B,)
        xs = _noised(x0, s)
        multi = self._teacher(few)
        teacher = multi or few
        target = shortcut_target(few, xs, s, d, base, teacher.using(cond=teacher.cond.unconditional()), self.distill_cfg, multi)
        prediction = few(xs, s, d)
        return {m: (prediction[m] - target[m]).pow(2).mean() for m in x0}

    def anchor(self, few: TeacherForced, x0: AV) -> dict[str, Tensor]:
        """Multi mode's velocity against the frozen copy's, on real chunks noised to per-sample uniform levels (B,)."""
        batch = next(iter(x0.values())).shape[0]
        s = torch.rand(batch, device=self.device)
        xs = _noised(x0, s)
        with torch.no_grad():
            held = few.using(net=self.teacher)(xs, s, 0.0)
        v = few(xs, s, 0.0)
        return {m: (v[m] - held[m]).pow(2).mean() for m in x0}

    def dmd(self, few: TeacherForced, x0: AV, ctl: torch.Generator, made: FewSamples | None = None) -> tuple[dict[str, Tensor], AV]:
        """DMD on a Few-mode sample of every chunk (gradient through its last jump); returns the losses and the
        detached sample (which trains the fake score). The sample is the rollout's (``made``) when it used the grid
        drawn here, else every chunk is sampled afresh from noise on the same history."""
        jumps = grid(self._choose(self.dmd_steps, ctl), self.few_shift, few=True)
        if made is not None and made.jumps == jumps:
            x = made.before_last
        else:
            with torch.no_grad():
                x = integrate(few, {m: torch.randn_like(v) for m, v in x0.items()}, jumps[:-1])
        s, step, d = jumps[-1]
        u = few(x, s, d)
        sample = {m: x[m] - step * u[m] for m in x}
        batch = next(iter(x0.values())).shape[0]
        low, high = self.dmd_levels
        t = low + (high - low) * torch.rand(batch, device=self.device)  # (B,)
        with torch.no_grad():
            xt = _noised({m: v.detach() for m, v in sample.items()}, t)
            real = self._multi_cfg(self._teacher(few) or few)(xt, t, 0.0)
            fake = few.using(net=self.fake)(xt, t, 0.0)
            real_x0 = {m: x0_from_velocity(xt[m], t.view(-1, 1, 1), real[m]) for m in xt}
            fake_x0 = {m: x0_from_velocity(xt[m], t.view(-1, 1, 1), fake[m]) for m in xt}
        return dmd_loss(sample, real_x0, fake_x0), {m: v.detach() for m, v in sample.items()}

    def train_fake(self, optimizer: torch.optim.Optimizer, batches: list[FakeBatch]) -> Tensor:
        """Flow matching of the fake score on the detached Few samples (same history): it tracks Few mode's
        distribution. Each micro-batch ``(group, sample, prefix, cond, history, levels)`` draws its noise from its own
        seed, so the result does not depend on how the global batch was split into ranks and micro-batches. The
        optimizer steps outside Lightning's step count, so ``global_step`` counts training steps (fp16 loss
        scaling is therefore not supported; bf16 and fp32 are)."""
        for update in range(self.fake_updates):
            optimizer.zero_grad()
            total = torch.zeros((), device=self.device)
            for group, sample, prefix, cond, history, levels in batches:
                torch.manual_seed(self.step_seed(group, stream=1 + update))
                fm = teacher_forcing_flow_matching(
                    self.fake, self.seq, sample, prefix, cond, self.noise, history, self.window, levels, self.motion_weight
                )
                loss = fm.loss({"audio": self.audio_weight}) / len(batches)
                self.manual_backward(loss)
                total += loss.detach()
            self.clip_or_skip(optimizer, self.grad_clip)
            optimizer.step()
        return total

    def accumulation(self) -> int:
        return self.accumulate

    def on_train_start(self) -> None:
        batches = self.trainer.num_training_batches
        if self.accumulate > 1 and batches != float("inf") and batches % self.accumulate:
            raise ValueError(
                f"model.accumulate={self.accumulate} does not divide the {batches} training batches of an epoch (the "
                "last micro-batches of every epoch would be dropped); set data.batches_per_epoch to a multiple of it"
            )

    def on_validation_model_zero_grad(self) -> None:
        """Validation may fall inside an accumulation (``val_check_interval`` counts batches): keep its gradients."""
        if not self._accumulating:
            super().on_validation_model_zero_grad()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters", False):
            raise ValueError(
                "MutualForcing under DDP needs trainer.strategy: ddp_find_unused_parameters_true (each backward uses "
                "only some networks: shared model, then fake score); or use ModelParallelStrategy (FSDP2)"
            )
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            raise ValueError("MutualForcing supports precision 32 and bf16-mixed, not fp16 with loss scaling (use bf16-mixed)")


def _noised(x: AV, s: Tensor) -> AV:
    """Every modality of ``x`` ``{m: (B, N, C)}`` noised to its sample's level ``s`` (B,), fresh noise."""
    return {m: interpolate(v, torch.randn_like(v), s.view(-1, 1, 1)) for m, v in x.items()}


def _cat(chunks: list[AV]) -> AV:
    """Chunks ``[{m: (B, n, C)}, ...]`` joined along the token axis."""
    return {m: torch.cat([c[m] for c in chunks], dim=1) for m in chunks[0]}
