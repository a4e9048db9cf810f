"""What parsing checkpoints in the isolated parser process costs, per checkpoint (app/ckpt_eval/isolation.py).

For each built-in architecture, the same checkpoint file is loaded in alternating rounds two ways:
in process (read, sha256, ``torch.load(weights_only=True)``, strict load into the architecture: what
the worker did before the isolation) and through the pre-started parser (stream + hash, parse,
conform, safetensors back, load into the architecture). Medians of the rounds, their difference
(the isolation's cost) and ratio; asserts nothing.

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
from ckpt_eval.checkpoints import extract_state_dict, load_checkpoint  # noqa: E402
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
            isolated, local = [], []
            for _ in range(rounds):
                started = time.perf_counter()
                load_checkpoint(root, path.name, arch, sha, parser)
                isolated.append(time.perf_counter() - started)
                started = time.perf_counter()
                in_process(path, arch)
                local.append(time.perf_counter() - started)
            a, b = statistics.median(local) * 1000, statistics.median(isolated) * 1000
            rows.append({"arch": arch, "bytes": path.stat().st_size, "in_process_ms": a, "isolated_ms": b})
    return rows


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    print(f"{'architecture':<13} {'file':>10} {'in process':>11} {'isolated':>9} {'cost':>8} {'ratio':>6}")
    for row in measure(rounds):
        a, b = float(row["in_process_ms"]), float(row["isolated_ms"])  # type: ignore[arg-type]
        print(f"{row['arch']:<13} {row['bytes']:>9,}B {a:>9.1f}ms {b:>7.1f}ms {b - a:>6.1f}ms {b / a:>6.2f}")
    print(f"medians of {rounds} alternating rounds, one torch thread")
    return 0


if __name__ == "__main__":
    sys.exit(main())
