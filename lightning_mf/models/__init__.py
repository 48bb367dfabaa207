"""Plain ``nn.Module`` networks: no Lightning, no losses, no I/O (LAYOUT.md §4)."""

from lightning_mf.models.kv_cache import KVCache
from lightning_mf.models.masks import Layout, attention_mask
from lightning_mf.models.tower import Tower, TowerConfig
from lightning_mf.models.transformer import AVTransformer, Tokens

__all__ = ["AVTransformer", "KVCache", "Layout", "Tokens", "Tower", "TowerConfig", "attention_mask"]
