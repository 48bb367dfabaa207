"""Stages 1 and 2 (METHOD §4): flow matching with teacher forcing, on one tower or on the coupled pair.

``UniModalPretraining`` (one modality) and ``JointTraining`` (both, initialised from the two stage-1
checkpoints) are the same :class:`TeacherForcing` step with different towers: configuration, not copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_mf.batch import AVBatch
from lightning_mf.lit.base import FlowModule
from lightning_mf.objectives.flow_matching import FlowMatchingResult, NoiseSchedule, teacher_forcing_flow_matching

__all__ = ["JointTraining", "TeacherForcing", "UniModalPretraining"]

# Options of sampling and output, not of the trained model: kept out of the checkpoint's hyper-parameters,
# because LightningCLI lets a checkpoint's hyper-parameters override the command line (`predict --ckpt_path`).
RUNTIME_OPTIONS = ["sampler", "predict_dir"]


class TeacherForcing(FlowModule):
    """Teacher-forcing flow matching on the towers of ``modalities``.

    Args:
        modalities: ``("video",)``, ``("audio",)`` or both.
        noise: how noise levels are drawn.
        audio_weight: weight of the audio loss (``L_video + audio_weight * L_audio``).
        init_towers: ``{modality: checkpoint path}`` of stage-1 runs whose tower weights start this run.
        init_from_ema: take the EMA weights of those checkpoints (else the online weights).
        motion_weight: ``{modality: strength}``: weight each token's error by how much its position changes along
            the window (:func:`~lightning_mf.objectives.flow_matching.motion_weights`), e.g. ``{video: 3}`` so
            the mouth is not drowned by the still face; empty = the plain mean.
        delayed_history: in training, the fraction of rows whose video history is their own clip delayed by 1 to L
            chunks (the first frame fills the start; L chunks: a mouth that never moves), while their targets stay the
            real chunks. Teacher forcing alone teaches the model to continue the history's mouth: sampled on its own
            history, it continues that history's timing instead of the transcript's. In these rows only the
            transcript tells the timing (docs/benchmarks.md, "Stage 1 knows the transcript").
        **kwargs: the shared options of :class:`~lightning_mf.lit.base.FlowModule` (spec, tower, codec, ...).
    """

    def __init__(
        self,
        modalities: tuple[str, ...] = ("video", "audio"),
        noise: NoiseSchedule = NoiseSchedule(),
        audio_weight: float = 1.0,
        init_towers: dict[str, str] | None = None,
        init_from_ema: bool = True,
        motion_weight: dict[str, float] | None = None,
        delayed_history: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(modalities, **kwargs)
        if not 0.0 <= delayed_history <= 1.0:
            raise ValueError(f"model.delayed_history is a fraction of rows, in [0, 1], got {delayed_history}")
        if delayed_history and "video" not in self.seq.modalities:
            raise ValueError("model.delayed_history delays the video history; the model has no video tower")
        self.delayed_history = delayed_history
        self.noise, self.audio_weight, self.motion_weight = noise, audio_weight, dict(motion_weight or {})
        unknown = set(self.motion_weight) - set(self.seq.modalities)
        if unknown:
            towers = list(self.seq.modalities)
            raise ValueError(f"model.motion_weight names {sorted(unknown)}, but the model's towers are {towers}")
        self.init_towers, self.init_from_ema = dict(init_towers or {}), init_from_ema
        self.init_fields = {m: f"model.init_args.init_towers.{m}" for m in self.init_towers}  # named in errors
        unknown = set(self.init_towers) - set(self.seq.modalities)
        if unknown:
            raise ValueError(f"model.init_towers names {sorted(unknown)}, but the model's towers are {list(self.seq.modalities)}")

    # Stage 3 with rollouts trains on the history it writes (at ctx_s); teacher forcing only on the noise it draws.
    trains_on_written_history = False

    def warn_if_history_level_untrained(self) -> None:
        """A model that streams with its chunks noised to ``ctx_s`` must have trained on such a history: written into
        a model trained on clean ones, a history at 0.1 took stage 2's drift from 11 to 39 (docs/benchmarks.md)."""
        if self.ctx_s > self.noise.context_noise and not self.trains_on_written_history:
            rank_zero_warn(
                f"model.ctx_s={self.ctx_s:g} writes generated chunks to the cache at a noise level this training never "
                f"gives its history (noise.context_noise={self.noise.context_noise:g}); raise context_noise to at least "
                "ctx_s, or lower ctx_s"
            )

    def setup(self, stage: str) -> None:
        """Load stage-1 towers when a fresh fit starts (not on resume: the checkpoint has them)."""
        if stage == "fit":
            self.warn_if_history_level_untrained()
        resuming = self._trainer is not None and self._trainer.ckpt_path is not None
        if stage == "fit" and self.init_towers and not resuming:
            for modality, path in self.init_towers.items():
                self.load_tower(modality, path, self.init_fields[modality])

    def load_tower(self, modality: str, path: str, field: str) -> None:
        """Copy one tower's weights from a stage-1 (or later) checkpoint, after checking that it fits this model."""
        prefix = f"towers.{modality}."
        weights = {k[len(prefix) :]: v for k, v in self.read_net(path, field, (modality,)).items() if k.startswith(prefix)}
        for net in (self.net, self.ema):
            if net is not None:
                net.towers[modality].load_state_dict(weights)

    def read_net(self, path: str, field: str, modalities: tuple[str, ...]) -> dict[str, Tensor]:
        """The network weights (EMA if ``init_from_ema`` and present) of a checkpoint with the given towers and this
        model's spec and tower size; errors name ``field`` (the config option that gave ``path``)."""
        if Path(path).is_dir():
            raise ValueError(f"{field}={path} is a sharded checkpoint folder; run `lightning-mf consolidate --ckpt {path}` and give the file it writes")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{field}={path} does not exist; train the earlier stage first (configs/tiny/)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        hparams = checkpoint.get("hyper_parameters", {})
        theirs = tuple(dict.fromkeys(k.split(".")[2] for k in checkpoint["state_dict"] if k.startswith("net.towers.")))
        missing = [m for m in modalities if m not in theirs]
        if missing:
            raise ValueError(f"{field}={path} is a checkpoint of {theirs} towers, it has no {missing}")
        self.check_shapes(hparams, f"{field}={path}")
        source = "ema" if self.init_from_ema and any(k.startswith("ema.") for k in checkpoint["state_dict"]) else "net"
        return {k[len(source) + 1 :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(f"{source}.")}

    def flow_matching(self, batch: AVBatch, cfg_dropout: float = 0.0) -> FlowMatchingResult:
        x0 = self.seq.encode(batch)
        history = self.delayed(batch, x0) if self.delayed_history and self.training else None
        return teacher_forcing_flow_matching(
            self.net, self.seq, x0, self.prefix(batch), self.condition(batch, cfg_dropout), self.noise, history=history,
            motion_weight=self.motion_weight,
        )

    def delayed(self, batch: AVBatch, x0: dict[str, Tensor]) -> dict[str, Tensor]:
        """``x0`` as history, with the video of a ``delayed_history`` fraction of rows delayed (see the class doc);
        the other modalities keep their real history."""
        frames, per_chunk = batch.video.shape[1], self.spec.frames_per_chunk
        device = batch.video.device
        delay = torch.randint(1, frames // per_chunk + 1, (batch.size,), device=device) * per_chunk  # (B,) frames
        delay = torch.where(torch.rand(batch.size, device=device) < self.delayed_history, delay, 0)
        source = (torch.arange(frames, device=device) - delay[:, None]).clamp(min=0)  # (B, T): frame t shows t - delay
        video = batch.video[torch.arange(batch.size, device=device)[:, None], source]  # (B, T, 3, H, W)
        return x0 | {"video": self.seq.codecs["video"].encode(video)}

    def training_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.cfg_dropout)

    def validation_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "val", 0.0)

    def test_step(self, batch: AVBatch, batch_idx: int) -> Tensor:
        """The validation measure under ``test/`` (``lightning-mf test``, on the held-out split)."""
        return self._step(batch, "test", 0.0)

    def _step(self, batch: AVBatch, stage: Literal["train", "val", "test"], cfg_dropout: float) -> Tensor:
        result = self.flow_matching(batch, cfg_dropout)
        loss = result.loss({"audio": self.audio_weight})
        held_out = stage != "train"
        when = {"on_step": not held_out, "on_epoch": held_out, "batch_size": batch.size}
        # held-out losses average over all ranks; per-noise-level buckets stay per rank, because a rank may draw no
        # level in a bucket and every rank must log the same synced keys (else the all-reduces hang)
        self.log_dict({f"{stage}/fm_{m}": e.mean() for m, e in result.errors.items()}, sync_dist=held_out, **when)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=held_out, **when)
        self.log_dict({f"{stage}/fm_{name}": value for name, value in result.by_bucket().items()}, **when)
        return loss


class UniModalPretraining(TeacherForcing):
    """Stage 1: one causal tower trained on its own modality.

    Args:
        modality: ``video`` or ``audio``.
        **kwargs: see :class:`TeacherForcing` and :class:`~lightning_mf.lit.base.FlowModule`.
    """

    def __init__(self, modality: Literal["video", "audio"] = "video", **kwargs: Any) -> None:
        super().__init__(modalities=(modality,), **kwargs)
        self.save_hyperparameters(ignore=RUNTIME_OPTIONS)


class JointTraining(TeacherForcing):
    """Stage 2: both towers coupled by zero-gated cross-modal attention, started from the stage-1 checkpoints.

    Args:
        video_ckpt: stage-1 video checkpoint (None: random video tower).
        audio_ckpt: stage-1 audio checkpoint (None: random audio tower).
        **kwargs: see :class:`TeacherForcing` and :class:`~lightning_mf.lit.base.FlowModule`.
    """

    def __init__(self, video_ckpt: str | None = None, audio_ckpt: str | None = None, **kwargs: Any) -> None:
        towers = {m: p for m, p in (("video", video_ckpt), ("audio", audio_ckpt)) if p is not None}
        super().__init__(modalities=("video", "audio"), init_towers=towers, **kwargs)
        self.init_fields = {m: f"model.init_args.{m}_ckpt" for m in towers}
        self.save_hyperparameters(ignore=RUNTIME_OPTIONS)
