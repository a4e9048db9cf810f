"""Fixtures shared by the integration and reliability suites (see tests/support/deployment.py), and the
run-time half of the PostgreSQL 9.4 check: every statement the test clusters received (their logs, read
when each cluster is destroyed: tests/support/pgcluster.py) goes through tests/support/pg94.py at the end
of the session; any statement newer than Greenplum 6's 9.4 kernel fails the run and is listed."""

from __future__ import annotations

import functools
from collections.abc import Generator

import pytest

from tests.support import pgcluster
from tests.support.deployment import cluster, deployment
from tests.support.pg94 import Finding, newer_than_94
from tests.support.pgcluster import MissingTool

__all__ = ["cluster", "deployment"]


@functools.cache
def _received_findings(count: int) -> list[tuple[str, str, list[Finding]]]:
    """(cluster, statement, findings) of each distinct statement with findings, among the first ``count``."""
    seen: dict[str, str] = {}
    for cluster_dir, statement in pgcluster.RECEIVED[:count]:
        seen.setdefault(statement, cluster_dir)
    # Tests may send what Greenplum refuses on purpose (to prove the app role is refused a trigger);
    # what must never reach a server is syntax its 9.4 kernel cannot parse.
    return [
        (cluster_dir, statement, found)
        for statement, cluster_dir in seen.items()
        if (found := newer_than_94(statement, greenplum=False))
    ]


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _received_findings(len(pgcluster.RECEIVED)):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    received = pgcluster.RECEIVED
    if not received:
        return
    findings = _received_findings(len(received))
    clusters = len({cluster_dir for cluster_dir, _ in received})
    distinct = len({statement for _, statement in received})
    terminalreporter.section("statements newer than PostgreSQL 9.4 (Greenplum 6)", red=bool(findings))
    terminalreporter.write_line(
        f"{len(received)} statements received by {clusters} test clusters ({distinct} distinct): "
        + (f"{len(findings)} NEWER THAN 9.4" if findings else "none newer than 9.4")
    )
    for cluster_dir, statement, found in findings:
        terminalreporter.write_line(f"- in {cluster_dir}: {' '.join(statement.split())[:300]}", red=True)
        for finding in found:
            terminalreporter.write_line(f"    {finding}", red=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A program the tests need that is not installed is reported as one line naming it, not a traceback."""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(MissingTool):
        report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
    return report
