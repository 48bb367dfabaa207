"""Shared fixtures: tiny synthetic shards written once per session, and the clips they came from."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import TINY_CLIPS, tiny_summary

from lightning_mf.data.clip import Clip
from lightning_mf.data.shards import synthetic_sources, write_shards
from lightning_mf.data.synthetic import PRESETS
from lightning_mf.spec import AVSpec


@pytest.fixture(scope="session")
def tiny_spec() -> AVSpec:
    return PRESETS["tiny"].spec


@pytest.fixture(scope="session")
def tiny_clips() -> dict[str, Clip]:
    """The clips behind ``tiny_shards``, by key."""
    clips = [clip for source in synthetic_sources("tiny", TINY_CLIPS, seed=7) for clip in source.clips()]
    return {clip.key: clip for clip in clips}


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 tiny clips, 4 held out, at most 2 clips per shard (so 4 train shards and 2 val shards)."""
    out = tmp_path_factory.mktemp("tiny_shards")
    write_shards(synthetic_sources("tiny", TINY_CLIPS, seed=7), out, tiny_summary(), val_fraction=1 / 3, max_clips_per_shard=2, progress=False)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under mutation testing (scripts/mutation.sh runs the tests inside mutmut's ``mutants/`` copy), run the fastest
    tests first: a mutant is caught at its first failing test, so this saves most of the run's time."""
    stats = Path("mutmut-stats.json")
    if not os.environ.get("MUTANT_UNDER_TEST") or not stats.is_file():
        return
    durations = json.loads(stats.read_text())["duration_by_test"]
    items.sort(key=lambda item: durations.get(item.nodeid, durations.get(f"mutants/{item.nodeid}", float("inf"))))
