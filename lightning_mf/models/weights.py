"""Loading user-provided weights into a module, with errors that say what does not fit (no downloads, ever)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["load_weights"]


def load_weights(module: nn.Module, weights: str | Path, prefix: str = "") -> None:
    """Load a state_dict file, or a checkpoint dict with ``"state_dict"`` (keys under ``prefix``), strictly.

    Lightning checkpoints pickle their hyper-parameters, so the file is unpickled in full: load only files you trust.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist; pass weights=None for the default")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state_dict")
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"weights file {str(path)!r} does not match {type(module).__name__}: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}, shape mismatches {bad_shape[:5]}; save the state_dict of the same "
            "architecture (torch.save(module.state_dict(), path))"
        )
    module.load_state_dict(state)
