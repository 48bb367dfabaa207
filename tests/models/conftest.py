"""Fixtures of tiny random models (see tiny_models.py)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import CHUNK_SECONDS, tower

from lightning_mf.models import AVTransformer


@pytest.fixture()
def video_model() -> AVTransformer:
    return AVTransformer({"video": tower("video")}, CHUNK_SECONDS)


@pytest.fixture()
def audio_model() -> AVTransformer:
    return AVTransformer({"audio": tower("audio", seed=1)}, CHUNK_SECONDS)


@pytest.fixture()
def joint_model() -> AVTransformer:
    model = AVTransformer({"video": tower("video"), "audio": tower("audio", seed=1)}, CHUNK_SECONDS)
    with torch.no_grad():  # a trained coupling: non-zero gates
        for gate in model.gates.values():
            gate.fill_(0.7)
    return model
