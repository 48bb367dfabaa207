"""Codecs turn raw media into transformer tokens and back (METHOD.md §2); swap in VAE codecs with the same API."""

from __future__ import annotations

from lightning_mf.codecs.audio import MelCodec
from lightning_mf.codecs.video import PatchCodec

__all__ = ["MelCodec", "PatchCodec"]
