"""What a result was measured on: recorded with every JSON result so two runs can be compared fairly."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _glibc() -> str:
    name, version = platform.libc_ver()
    return f"{name} {version}".strip() or "unknown"


def describe_machine(threads: int) -> dict[str, object]:
    info: dict[str, object] = {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "glibc": _glibc(),
        "kernel": platform.release(),
        "torch_threads": threads,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    return info  # the floor process adds torch's version and thread counts (runner.py)
