"""LowRankDelta: a network that is another network plus trainable low-rank updates of its linear layers (LoRA).

Mutual Forcing's fake score can be a full copy of the shared model or this cheaper variant (METHOD-NOTES §2.5,
"LoRA-on-θ"): the fake score is the *current* shared weights plus ``B A`` on every linear layer of the transformer
blocks, so it follows the shared model and only learns how the Few-mode distribution differs from it. ``B`` starts at
zero, so the fake score starts equal to the shared model, as a fresh copy would.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["LowRankDelta"]


class LowRankDelta(nn.Module):
    """``base`` with ``W + (alpha / rank) B A`` for each ``nn.Linear`` inside a ``blocks`` list.

    The base network is referenced, not registered: its parameters belong to (and are saved with) its owner, and
    they get no gradient from this module (they enter detached). ``parameters()`` are the adapters only.

    Args:
        base: the network to adapt (called with the same arguments as this module).
        rank: rank of each update.
        alpha: scale numerator (``alpha / rank``).
    """

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 8.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LowRankDelta: rank must be >= 1, got {rank}")
        object.__setattr__(self, "base", base)  # not a submodule
        self.scale = alpha / rank
        self.names = [f"{name}.weight" for name, m in base.named_modules() if isinstance(m, nn.Linear) and ".blocks." in name]
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()
        for name in self.names:
            out_features, in_features = base.get_parameter(name).shape
            key = name.replace(".", "__")
            self.down[key] = nn.Parameter(torch.empty(rank, in_features).normal_(0, 1 / math.sqrt(in_features)))
            self.up[key] = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        weights = {name: p.detach() for name, p in self.base.named_parameters()}
        for name in self.names:
            key = name.replace(".", "__")
            weights[name] = weights[name] + self.scale * (self.up[key] @ self.down[key])
        return functional_call(self.base, weights, args, kwargs)
