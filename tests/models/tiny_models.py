"""Tiny random models and token sequences for the model tests (weights randomised: a zero-initialised DiT
ignores its inputs, which would make equivalence tests pass vacuously)."""

from __future__ import annotations

import torch

from lightning_mf.models import Layout, Tokens, Tower, TowerConfig

TINY = TowerConfig(dim=32, depth=2, heads=2, vocab_size=16)
PER_CHUNK = {"video": 4, "audio": 3}  # tokens per chunk
DIMS = {"video": 12, "audio": 8}
CHUNK_SECONDS = 0.125


def randomize(module: torch.nn.Module, std: float = 0.15, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere except the cross-modal gates (those must stay 0 in a freshly coupled model)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.startswith("gates"):
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return module


def tower(modality: str, seed: int = 0) -> Tower:
    return randomize(Tower(DIMS[modality], TINY), seed=seed)


def sequence(modalities: tuple[str, ...], chunks: int, batch: int = 2, prefix: bool = True, seed: int = 0) -> dict[str, Tokens]:
    """Random tokens of chunks 1..chunks (all marked clean: the plain block-causal layout), plus a video prefix."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in modalities:
        first = 0 if (prefix and m == "video") else 1
        chunk = torch.arange(first, chunks + 1).repeat_interleave(PER_CHUNK[m])
        n = chunk.shape[0]
        pos = torch.stack([(chunk - 1).clamp(min=0).float() * CHUNK_SECONDS, torch.arange(n).float() % 2, torch.zeros(n)], dim=1)
        s = torch.rand(batch, chunks + 1, generator=g)[:, chunk]
        out[m] = Tokens(torch.randn(batch, n, DIMS[m], generator=g), s, pos, Layout(chunk, torch.ones(n, dtype=torch.bool)))
    return out


def select(tokens: Tokens, keep: torch.Tensor) -> Tokens:
    return Tokens(tokens.x[:, keep], tokens.s[:, keep], tokens.pos[keep], Layout(tokens.layout.chunk[keep], tokens.layout.clean[keep]))
