"""Shared test configuration: suite markers and the CI rule for integration tests.

Every test under ``tests/integration`` gets the ``integration`` marker automatically (select
with ``-m integration``, leave out with ``-m "not integration"``). With ``CI=true`` an
integration test that would be skipped fails instead: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"


def in_ci() -> bool:
    """Whether the run is CI (``CI=true``, as GitHub Actions, GitLab and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (
        in_ci()
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("integration") is not None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"integration test skipped in CI (CI=true), which is a failure: {reason}"
    return report
