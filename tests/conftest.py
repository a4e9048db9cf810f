"""Fixtures shared by the integration and reliability suites (see tests/support/deployment.py)."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support.deployment import cluster, deployment
from tests.support.pgcluster import MissingTool

__all__ = ["cluster", "deployment"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A program the tests need that is not installed is reported as one line naming it, not a traceback."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(MissingTool):
        report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
    return report
