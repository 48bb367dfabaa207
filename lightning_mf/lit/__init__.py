"""LightningModules: optimisation, logging and checkpoint state; the maths lives in objectives/ and sampling/."""

import torch

from lightning_mf.lit.base import CodecConfig, FlowModule, SamplerConfig, paper_adamw
from lightning_mf.lit.mutual_forcing import MutualForcing
from lightning_mf.lit.syncnet import SyncNetTraining
from lightning_mf.lit.teacher_forcing import JointTraining, TeacherForcing, UniModalPretraining
from lightning_mf.models.tower import TowerConfig
from lightning_mf.objectives.flow_matching import NoiseSchedule
from lightning_mf.spec import AVSpec

__all__ = ["CodecConfig", "FlowModule", "JointTraining", "MutualForcing", "SamplerConfig", "SyncNetTraining", "TeacherForcing", "UniModalPretraining"]

# Checkpoints keep these (plain frozen dataclasses, the default optimizer factory) among their hyper-parameters.
# Lightning resumes with torch.load(weights_only=True), which refuses any class it was not told is safe.
torch.serialization.add_safe_globals([AVSpec, CodecConfig, NoiseSchedule, SamplerConfig, TowerConfig, paper_adamw])
