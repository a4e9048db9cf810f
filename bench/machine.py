"""What a result was measured on: recorded with every JSON result so two runs can be compared fairly."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
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


def _torch_info() -> dict[str, object]:
    """Asked of a fresh interpreter, so the harness's own imports and settings do not colour it."""
    code = (
        "import json, torch; print(json.dumps({'torch': torch.__version__, "
        "'default_threads': torch.get_num_threads(), 'mkldnn': torch.backends.mkldnn.is_available()}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json

    return dict(json.loads(out))


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
    info.update(_torch_info())
    return info
