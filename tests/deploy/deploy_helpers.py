"""Shared helpers of the deploy/ checks: paths, YAML loading, external tools, the contract.

A plain module (not conftest.py): the test modules of this folder import it by name, which
pytest's default import mode allows because tests/deploy has no ``__init__.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
K8S_DIR = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ALERTS_PATH = PROMETHEUS_DIR / "alerts.yml"
TEAM_NOTES = REPO / "docs" / "TEAM_NOTES.md"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """Path of an external tool; skip without it locally, fail without it in CI (CI=true)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH (Debian/Ubuntu: apt-get install prometheus)"
        if in_ci():
            pytest.fail(f"{message}; CI must run this check")
        pytest.skip(message)
    return path


def run_tool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def load_module(path: Path) -> ModuleType:
    """Import a script of deploy/ (not a package) by path."""
    name = f"_deploy_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def contract_metrics() -> set[str]:
    """Metric names of the Prometheus contract table in docs/TEAM_NOTES.md."""
    names: set[str] = set()
    for line in TEAM_NOTES.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells and cells[0].startswith("stream_"):
            names.update(n.strip() for n in cells[0].split("/"))
    assert names, f"no metric table found in {TEAM_NOTES}"
    return names


_METRIC = re.compile(r"\bstream_[a-z_]+\b")
_SUFFIXES = ("_bucket", "_count", "_sum")


def metrics_in(expr: str) -> set[str]:
    """``stream_*`` metric names an expression reads (histogram suffixes removed)."""
    found = set()
    for name in _METRIC.findall(expr):
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        found.add(name)
    return found


def settings_env_names() -> set[str]:
    """Every ``STREAM_*`` variable StreamSettings reads."""
    from stream.settings import StreamSettings

    return {f"STREAM_{name.upper()}" for name in StreamSettings.model_fields}


def cli_env_names() -> set[str]:
    """``STREAM_*`` variables read by the command line itself (not settings fields)."""
    source = "".join(
        (REPO / "stream" / name).read_text(encoding="utf-8")
        for name in ("__main__.py", "cli_help.py")
    )
    return set(re.findall(r"env(?:iron)?\.get\(\s*\"(STREAM_[A-Z_]+)\"", source))


@functools.cache
def compose() -> dict[str, Any]:
    """The parsed docker-compose file."""
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data
