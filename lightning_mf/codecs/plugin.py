"""Codecs from outside the package, e.g. a pretrained video or audio VAE, named by import path in ``model.codec``.

The model only needs a codec's token geometry and its two directions, so any ``nn.Module`` with this interface
replaces :class:`~lightning_mf.codecs.PatchCodec` or :class:`~lightning_mf.codecs.MelCodec`:

- ``__init__(spec, **args)``: built from the run's :class:`~lightning_mf.spec.AVSpec` and ``codec.video_args``
  (or ``audio_args``); load and freeze your weights here (the optimizers only see the transformer).
- ``token_dim`` (features per token) and ``tokens_per_chunk`` (tokens of ``spec.frames_per_chunk`` frames).
- ``encode``: video (B, T, 3, H, W) uint8 -> (B, N, token_dim), or audio (B, S) float -> (B, N, token_dim).
- ``decode``: tokens -> video float in [-1, 1] (B, T, 3, H, W), or audio float (B, S).
- ``positions(num_frames, device)``: rotary positions (N, 3) (time in seconds, row, column) or (N, 1) (time); the
  time of a token is the centre of the span of time it covers (see ``lightning_mf/sequence.py``).
- video only: ``tubelet``, the frames one token step spans (the first-frame prefix repeats the frame that often).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from lightning_mf.spec import AVSpec

__all__ = ["REQUIRED", "build_codec"]

REQUIRED = {
    "video": ("token_dim", "tokens_per_chunk", "encode", "decode", "positions", "tubelet"),
    "audio": ("token_dim", "tokens_per_chunk", "encode", "decode", "positions"),
}


def build_codec(path: str, spec: AVSpec, args: dict[str, Any], modality: str) -> nn.Module:
    """Import ``package.module.Class``, build it with ``(spec, **args)`` and check that it has the codec interface
    and that its positions cover one chunk in ``tokens_per_chunk`` tokens; errors name ``model.codec.<modality>``."""
    field = f"model.codec.{modality}={path}"
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name) if module_name else None
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{field}: cannot import it ({error}); give the import path of a codec class") from error
    if cls is None:
        raise ValueError(f"{field}: give the full import path, e.g. my_package.vae.VideoVAECodec")
    codec = cls(spec, **args)
    if not isinstance(codec, nn.Module):
        raise TypeError(f"{field} built a {type(codec).__name__}, not an nn.Module (the sequencer holds it as a submodule)")
    missing = [attribute for attribute in REQUIRED[modality] if not hasattr(codec, attribute)]
    if missing:
        raise TypeError(f"{field} lacks {missing} of the codec interface (see lightning_mf/codecs/plugin.py)")
    tokens = codec.positions(spec.frames_per_chunk).shape[0]
    if tokens != codec.tokens_per_chunk:
        raise ValueError(f"{field}: positions() of one chunk has {tokens} tokens, but tokens_per_chunk says {codec.tokens_per_chunk}")
    return codec
