"""Losses as functions of networks and tensors: no optimizers, no logging (LAYOUT.md §4)."""

from lightning_mf.objectives.flow_matching import FlowMatchingResult, NoiseSchedule, teacher_forcing_flow_matching

__all__ = ["FlowMatchingResult", "NoiseSchedule", "teacher_forcing_flow_matching"]
