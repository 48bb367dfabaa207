"""Small building blocks shared by the towers: norms, MLP, noise-level embeddings, adaLN modulation."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["MLP", "NoiseLevelEmbedding", "RMSNorm", "modulate", "sinusoidal", "zero_init"]


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's weights and bias: the adaLN-Zero trick that makes a new path start as a no-op."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-token shift/scale (B, N, D)."""
    return x * (1 + scale) + shift


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension with a learned gain (used for q/k norms)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x), approximate="tanh"))


def sinusoidal(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features (..., dim) of a scalar per element of ``t``; ``t`` is scaled by 1000 so that noise
    levels in [0, 1] and step sizes use the whole frequency range (as DiT does with integer timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[..., None] * freqs  # (..., half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class NoiseLevelEmbedding(nn.Module):
    """Embeds a noise level ``s`` or a step size ``d`` (sinusoidal features -> MLP).

    With ``zero_last=True`` the output is exactly 0 at initialisation, for any input: adding the ``d`` path to a
    model trained with ``d = 0`` leaves it unchanged (METHOD §1).
    """

    def __init__(self, dim: int, features: int = 128, zero_last: bool = False) -> None:
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))
        if zero_last:
            zero_init(self.mlp[2])

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(sinusoidal(t, self.features).to(self.mlp[0].weight.dtype))
