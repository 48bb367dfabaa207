"""The set-up files agree with each other: the README's commands, CI, the lock, environment.yml and pyproject."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements/lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_environment_yml_pins_equal_the_lock() -> None:
    lock = _lock()
    pip_lines = re.findall(r"^\s+- ([A-Za-z0-9_.\-\[\]]+==\S+)$", (REPO / "environment.yml").read_text(), flags=re.M)
    assert len(pip_lines) >= 12
    for line in pip_lines:
        req = Requirement(line)
        assert lock[canonicalize_name(req.name)] == str(req.specifier).removeprefix("=="), line


def test_every_dependency_is_locked_within_its_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = _lock()
    for spec in project["dependencies"] + [spec for extra in project["optional-dependencies"].values() for spec in extra]:
        req = Requirement(spec)
        assert canonicalize_name(req.name) in lock, f"{req.name} is not in requirements/lock.txt"
        assert req.specifier.contains(lock[canonicalize_name(req.name)]), f"lock pins {req.name}=={lock[canonicalize_name(req.name)]} outside {req.specifier}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == ["bash scripts/test.sh"]
