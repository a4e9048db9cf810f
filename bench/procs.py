"""Running a measured child process: wall time, resource usage, and when given log lines appeared."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Measured:
    argv: Sequence[str]
    returncode: int
    wall: float  # seconds from spawn to exit
    user: float  # CPU seconds of the process (not of its children)
    system: float
    max_rss_mb: float
    minor_faults: int
    major_faults: int
    stdout: str
    stderr_lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since spawn, line)

    def first(self, needle: str) -> float | None:
        return next((t for t, line in self.stderr_lines if needle in line), None)

    def last(self, needle: str) -> float | None:
        hits = [t for t, line in self.stderr_lines if needle in line]
        return hits[-1] if hits else None

    def count(self, needle: str) -> int:
        return sum(1 for _, line in self.stderr_lines if needle in line)

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.stderr_lines)


def run_measured(
    argv: Sequence[str], env: dict[str, str], cwd: Path | None = None, ok_codes: Sequence[int] = (0,)
) -> Measured:
    """Run argv to completion; stderr is read line by line as it arrives so log lines get timestamps."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, text=True
        )
        lines: list[tuple[float, str]] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.perf_counter() - started, line.rstrip("\n")))
        # wait4 instead of Popen.wait: it returns the child's own rusage (peak RSS, faults, CPU).
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stderr.close()
        out.seek(0)
        stdout = out.read()
    measured = Measured(
        argv=list(argv),
        returncode=proc.returncode,
        wall=wall,
        user=usage.ru_utime,
        system=usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024.0,
        minor_faults=usage.ru_minflt,
        major_faults=usage.ru_majflt,
        stdout=stdout,
        stderr_lines=lines,
    )
    if measured.returncode not in ok_codes:
        tail = "\n".join(line for _, line in lines[-30:])
        raise RuntimeError(f"{argv[0]} exited {measured.returncode}:\n{tail}\n{stdout[-2000:]}")
    return measured
