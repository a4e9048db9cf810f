"""The reliability and security suite: each test is a scenario with a promise and a measured figure.

Mark a test with ``@pytest.mark.scenario("name", "what must hold")`` and call the ``figure``
fixture with what was measured; the session ends with a table of every scenario and the line
``N passed, N failed``. Figures are reported, never asserted; correctness is asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass
class ScenarioResult:
    scenario: str
    promise: str
    result: str = "not run"
    figure: str = ""


_RESULTS: dict[str, ScenarioResult] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "scenario(name, promise): a reliability scenario and what must hold")


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record the figure a scenario measured (shown in the table whatever the outcome)."""

    def record(text: str) -> None:
        entry = _RESULTS.get(request.node.nodeid)
        if entry is not None:
            entry.figure = text if not entry.figure else f"{entry.figure}; {text}"

    return record


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("scenario")
        if marker is not None:
            name, promise = marker.args
            label = name if "[" not in item.nodeid else f"{name} [{item.nodeid.split('[', 1)[1].rstrip(']')}]"
            _RESULTS[item.nodeid] = ScenarioResult(label, promise)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    entry = _RESULTS.get(item.nodeid)
    if entry is not None and (report.when == "call" or (report.when == "setup" and not report.passed)):
        entry.result = "skipped" if report.skipped else "PASS" if report.passed else "FAIL"
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    ran = [entry for entry in _RESULTS.values() if entry.result != "not run"]
    if not ran:
        return
    headers = ("scenario", "what must hold", "result", "figure")
    rows = [(e.scenario, e.promise, e.result, e.figure or "-") for e in ran]
    widths = [min(60, max(len(h), *(len(r[i]) for r in rows))) for i, h in enumerate(headers[:3])]
    terminalreporter.section("reliability and security")
    line = "  ".join(h.ljust(w) for h, w in zip(headers[:3], widths, strict=True)) + "  " + headers[3]
    terminalreporter.write_line(line)
    terminalreporter.write_line("-" * min(160, len(line) + 40))
    for row in rows:
        cells = [text if len(text) <= w else text[: w - 3] + "..." for text, w in zip(row[:3], widths, strict=True)]
        terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  " + row[3])
    passed = sum(e.result == "PASS" for e in ran)
    failed = sum(e.result == "FAIL" for e in ran)
    terminalreporter.write_line(f"reliability: {passed} passed, {failed} failed")
