"""Shared by the benchmark scripts: a machine description and the rewrite of one section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU"


def write_section(path: Path, name: str, body: str) -> str:
    """Replace the ``<!-- name -->...<!-- /name -->`` section of ``path`` (or append it); return the section."""
    section = f"<!-- {name} -->\n{body}\n<!-- /{name} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
    return section
