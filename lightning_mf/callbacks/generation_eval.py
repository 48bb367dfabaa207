"""GenerationEval: every N steps, generate from fixed held-out conditions, score, and show it in TensorBoard.

The conditions (first frames and transcripts of the first ``num_clips`` validation windows) are taken once at the
start of fit, and every run uses the same seed, so numbers are comparable across steps and runs. Each configured
mode (a :class:`~lightning_mf.lit.base.SamplerConfig`, e.g. Multi 50 steps + CFG, Few 4 jumps) generates the clips through the
model's own streaming path; the metrics that apply to the model's modalities are logged as ``eval/<metric>_<mode>``
and the first clip of each mode as a video (an animated GIF image, no moviepy needed) and an audio entry. When the
validation split holds ``num_clips`` more windows, the floors and ceilings of every metric (``metrics.scoring.
reference_rows``) are logged once, at the first evaluation, as ``eval/<metric>_<row>`` with rows ``real``,
``real_other_characters`` and ``copy_first_frame``.
Generation runs on global rank 0 only (no collectives), so it is safe under DDP; under FSDP (sharded weights: every
forward gathers them collectively) every rank generates rank 0's conditions and rank 0 alone scores and logs.
"""

from __future__ import annotations

import io
from typing import Any

import lightning as L
import torch
from PIL import Image
from torch import Tensor

from lightning_mf.batch import AVBatch
from lightning_mf.lit.base import FlowModule, SamplerConfig
from lightning_mf.metrics.scoring import PRETRAINED, Scorer, reference_rows

__all__ = ["GenerationEval", "gif_summary", "take_windows"]

REFERENCE_TAGS = {
    "real (held-out)": "real", "real, other characters": "real_other_characters", "copy first frame": "copy_first_frame",
    "copy first frame + grain": "copy_first_frame_grain",
}


def gif_summary(tag: str, frames: Tensor, fps: int) -> Any:
    """A TensorBoard image summary holding an animated GIF of ``frames`` (T, 3, H, W) uint8."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    images = [Image.fromarray(f.permute(1, 2, 0).cpu().numpy()) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    height, width = images[0].height, images[0].width
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


class GenerationEval(L.Callback):
    """Scores generated clips during training.

    Args:
        every_n_steps: evaluate when ``global_step`` is a multiple of this (and at the end of fit).
        num_clips: held-out windows whose conditions are reused every time.
        modes: ``{name: SamplerConfig}``, e.g. ``{"few4": {mode: few, steps: 4}, "multi50": {...}}``; default: the
            model's own ``sampler``, named ``<mode><steps>``.
        log_media: also log the first clip of each mode as video and audio.
        vowel_classifier_clips: synthetic clips used to train the vowel classifier of the vowel error rate
            (0 disables that metric, e.g. for real data whose tokens are not vowels).
        syncnet_weights: a SyncNet state_dict or ``SyncNetTraining`` checkpoint; enables LSE-D/LSE-C/AV offset.
        max_offset: LipSync offsets in frames (capped to fit the windows).
        pretrained: ``{network: weights file}`` of pretrained feature networks for extra Fréchet distances, logged as
            ``fd_<network>``: ``inception`` (frames), ``r3d_18``/``mc3_18``/``r2plus1d_18``/``s3d`` (whole windows as
            clips) and ``vggish`` (whole windows of audio, >= 0.975 s). Nothing is downloaded.
        bootstraps: resamples of the clips behind each Fréchet distance's 95% interval (``fd_*_ci95``; 0: none).
    """

    def __init__(
        self, every_n_steps: int = 200, num_clips: int = 4, modes: dict[str, SamplerConfig] | None = None,
        log_media: bool = True, vowel_classifier_clips: int = 48, syncnet_weights: str | None = None, max_offset: int = 15,
        pretrained: dict[str, str] | None = None, bootstraps: int = 100,
    ) -> None:
        super().__init__()
        if every_n_steps < 1 or num_clips < 2:
            raise ValueError(f"GenerationEval needs every_n_steps >= 1 and num_clips >= 2, got {every_n_steps}, {num_clips}")
        self.every_n_steps, self.num_clips, self.modes, self.log_media = every_n_steps, num_clips, modes, log_media
        self.vowel_classifier_clips, self.syncnet_weights, self.max_offset = vowel_classifier_clips, syncnet_weights, max_offset
        self.bootstraps = bootstraps
        unknown = set(pretrained or {}) - PRETRAINED
        if unknown:
            raise ValueError(f"GenerationEval: pretrained networks {sorted(unknown)} are unknown; choose from {sorted(PRETRAINED)}")
        self.pretrained = dict(pretrained or {})
        self.conditions: AVBatch | None = None
        self.others: AVBatch | None = None  # more held-out windows, for the reference rows (logged once)
        self.scorer: Scorer | None = None
        self.last: dict[str, float] = {}
        self.last_step: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, FlowModule):
            raise TypeError(f"GenerationEval works with FlowModule models, got {type(pl_module).__name__}")
        conditions = take_windows(trainer.datamodule.val_dataloader(), self.num_clips) if trainer.is_global_zero else None
        if pl_module.device_mesh is not None:  # sharded weights (ModelParallelStrategy): every rank generates
            conditions = trainer.strategy.broadcast(conditions, src=0)
        if trainer.is_global_zero:
            self.prepare(pl_module, conditions)
            try:
                self.others = take_windows(trainer.datamodule.val_dataloader(), self.num_clips, skip=self.num_clips)
            except ValueError:
                self.others = None  # too few held-out windows: no reference rows
        else:
            self.conditions = conditions  # None unless sharded: then this rank only helps generate

    def prepare(self, module: FlowModule, conditions: AVBatch) -> None:
        """Fix the conditions and build the scorer (feature networks; the vowel classifier when there is audio)."""
        self.conditions = conditions
        self.scorer = Scorer(
            module.spec, module.seq.modalities, vowel_classifier_clips=self.vowel_classifier_clips,
            syncnet_weights=self.syncnet_weights, max_offset=self.max_offset, pretrained=self.pretrained,
            bootstraps=self.bootstraps,
        )
        try:
            self.scorer.check_length(conditions)
        except ValueError as error:
            raise ValueError(f"GenerationEval: {error}") from None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.evaluate(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: FlowModule) -> dict[str, float]:
        """Generate in every mode, compute the metrics, log them (and media); returns the scalars (on rank 0)."""
        if self.conditions is None or self.last_step == trainer.global_step:  # fit end right after an evaluation
            return self.last
        scoring = trainer.is_global_zero  # other ranks get here only when sharded: they join generation's forwards
        real = self.conditions.to(pl_module.device)
        modes = self.modes or {f"{pl_module.sampler.mode}{pl_module.sampler.steps}": pl_module.sampler}
        scalars: dict[str, float] = {}
        was_training = pl_module.training
        pl_module.eval()
        for name, sampler in modes.items():
            media = pl_module.generate(real, sampler=sampler)
            if not scoring:
                continue
            for metric, value in self.scorer.score(media, made_from=real, reference=real).items():
                scalars[f"eval/{metric}_{name}"] = value
            if self.log_media:
                self._log_media(trainer, pl_module, name, media)
        pl_module.train(was_training)
        if scoring and self.others is not None:  # the floors and ceilings, once
            for row, metrics in reference_rows(self.scorer, real, self.others.to(pl_module.device)).items():
                scalars |= {f"eval/{metric}_{REFERENCE_TAGS[row]}": value for metric, value in metrics.items()}
            self.others = None
        if scoring:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=trainer.global_step)
            self.last = scalars
        self.last_step = trainer.global_step
        return self.last

    def _log_media(self, trainer: L.Trainer, module: FlowModule, name: str, media: dict[str, Tensor]) -> None:
        for logger in trainer.loggers:
            writer = getattr(logger, "experiment", None)
            if writer is None or not hasattr(writer, "add_audio"):
                continue  # not TensorBoard
            if "video" in media:
                writer.file_writer.add_summary(gif_summary(f"eval/video_{name}", media["video"][0], module.spec.fps), trainer.global_step)
            if "audio" in media:
                writer.add_audio(f"eval/audio_{name}", media["audio"][0].float().cpu().clamp(-1, 1), trainer.global_step, sample_rate=module.spec.sample_rate)


def take_windows(loader: Any, count: int, skip: int = 0) -> AVBatch:
    """The windows ``skip .. skip + count - 1`` of a loader of AVBatch, as one batch."""
    batches: list[AVBatch] = []
    for batch in loader:
        batches.append(batch)
        if sum(b.size for b in batches) >= skip + count:
            break
    total = sum(b.size for b in batches)
    if total < skip + count:
        raise ValueError(f"the loader holds {total} windows, fewer than the {skip + count} needed")
    return _slice(batches, skip, skip + count)


def _slice(batches: list[AVBatch], start: int, stop: int) -> AVBatch:
    return AVBatch(
        video=torch.cat([b.video for b in batches])[start:stop], audio=torch.cat([b.audio for b in batches])[start:stop],
        start_frame=torch.cat([b.start_frame for b in batches])[start:stop],
        keys=[k for b in batches for k in b.keys][start:stop], meta=[m for b in batches for m in b.meta][start:stop],
    )
