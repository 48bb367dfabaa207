"""LightningModules: optimisation, logging and checkpoint state; the maths lives in objectives/ and sampling/."""

from lightning_mf.lit.base import CodecConfig, FlowModule, SamplerConfig
from lightning_mf.lit.mutual_forcing import MutualForcing
from lightning_mf.lit.syncnet import SyncNetTraining
from lightning_mf.lit.teacher_forcing import JointTraining, TeacherForcing, UniModalPretraining

__all__ = ["CodecConfig", "FlowModule", "JointTraining", "MutualForcing", "SamplerConfig", "SyncNetTraining", "TeacherForcing", "UniModalPretraining"]
