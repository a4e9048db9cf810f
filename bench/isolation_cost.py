"""What parsing checkpoints in the isolated parser process costs, per checkpoint (app/ckpt_eval/isolation.py).

For each built-in architecture, the same checkpoint file is loaded in alternating rounds three ways:
in process (read, sha256, ``torch.load(weights_only=True)``, strict load into the architecture: what
the worker did before the isolation), through the pre-started parser one checkpoint at a time
(``load_checkpoint``: read + hash, parse, conform, safetensors back, load into the architecture),
and ten in a row through ``load_checkpoints`` (what a group does: the parser parses one while the
worker builds the previous one and a reader thread hashes the next), per checkpoint. Medians of the
rounds, the isolation's cost and ratio against in process; asserts nothing.

    .venv/bin/python bench/isolation_cost.py [rounds]
"""

from __future__ import annotations

import hashlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "app"))

from ckpt_eval.architectures import build_model  # noqa: E402
from ckpt_eval.checkpoints import CheckpointRequest, extract_state_dict, load_checkpoint, load_checkpoints  # noqa: E402
from ckpt_eval.isolation import CheckpointParser  # noqa: E402


def in_process(path: Path, arch: str) -> None:
    data = path.read_bytes()
    hashlib.sha256(data).hexdigest()
    state = extract_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), path.name)
    model = build_model(arch)
    model.load_state_dict(state, strict=True)
    model.eval()


def measure(rounds: int) -> list[dict[str, object]]:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="ckpt-eval-isolation-"))
    rows = []
    with CheckpointParser() as parser:
        for arch in ("digits_mlp", "fashion_cnn"):
            torch.manual_seed(0)
            buffer = io.BytesIO()
            torch.save(build_model(arch).state_dict(), buffer)
            path = root / f"{arch}.pt"
            path.write_bytes(buffer.getvalue())
            sha = hashlib.sha256(buffer.getvalue()).hexdigest()
            load_checkpoint(root, path.name, arch, sha, parser)  # warm both paths
            in_process(path, arch)
            isolated, local, pipelined = [], [], []
            group = [(index, CheckpointRequest(path.name, arch, sha)) for index in range(10)]
            for _ in range(rounds):
                started = time.perf_counter()
                load_checkpoint(root, path.name, arch, sha, parser)
                isolated.append(time.perf_counter() - started)
                started = time.perf_counter()
                in_process(path, arch)
                local.append(time.perf_counter() - started)
                started = time.perf_counter()
                for _, result in load_checkpoints(root, group, parser):
                    if isinstance(result, Exception):
                        raise result
                pipelined.append((time.perf_counter() - started) / len(group))
            a, b = statistics.median(local) * 1000, statistics.median(isolated) * 1000
            c = statistics.median(pipelined) * 1000
            row = {"arch": arch, "bytes": path.stat().st_size, "in_process_ms": a, "isolated_ms": b, "pipelined_ms": c}
            rows.append(row)
    return rows


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    print(
        f"{'architecture':<13} {'file':>10} {'in process':>11} {'isolated':>9} {'ratio':>6} "
        f"{'10 in a row, each':>18} {'ratio':>6}"
    )
    for row in measure(rounds):
        a, b, c = (float(row[key]) for key in ("in_process_ms", "isolated_ms", "pipelined_ms"))  # type: ignore[arg-type]
        print(f"{row['arch']:<13} {row['bytes']:>9,}B {a:>9.1f}ms {b:>7.1f}ms {b / a:>6.2f} {c:>16.1f}ms {c / a:>6.2f}")
    print(f"medians of {rounds} alternating rounds, one torch thread")
    return 0


if __name__ == "__main__":
    sys.exit(main())
