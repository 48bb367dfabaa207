"""Codecs turn raw media into transformer tokens and back (METHOD.md §2). A VAE with the same interface replaces them
by import path in the config (``model.codec.video`` / ``audio``, see :mod:`lightning_mf.codecs.plugin`)."""

from __future__ import annotations

from lightning_mf.codecs.audio import MelCodec
from lightning_mf.codecs.video import PatchCodec

__all__ = ["MelCodec", "PatchCodec"]
