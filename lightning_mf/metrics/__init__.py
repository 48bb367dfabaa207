"""Evaluation metrics as torchmetrics Metrics (accumulate over batches, reduce across processes): METHOD §6."""

from lightning_mf.metrics.drift import IdentityDrift
from lightning_mf.metrics.frechet import AudioFeatures, ClipFeatures, FrameFeatures, FrechetDistance, frechet_distance
from lightning_mf.metrics.lipsync import LipSync
from lightning_mf.metrics.oracle import OracleSync
from lightning_mf.metrics.pretrained import InceptionFeatures, VGGishFeatures, VideoNetFeatures
from lightning_mf.metrics.stillness import BackgroundFlicker, MouthMotion
from lightning_mf.metrics.vowels import VowelClassifier, VowelErrorRate, train_vowel_classifier

__all__ = [
    "AudioFeatures",
    "BackgroundFlicker",
    "ClipFeatures",
    "FrameFeatures",
    "FrechetDistance",
    "IdentityDrift",
    "InceptionFeatures",
    "LipSync",
    "MouthMotion",
    "OracleSync",
    "VGGishFeatures",
    "VideoNetFeatures",
    "VowelClassifier",
    "VowelErrorRate",
    "frechet_distance",
    "train_vowel_classifier",
]
