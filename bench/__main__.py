"""``python -m bench [--mode quick|full|smoke] [--out FILE]`` or ``python -m bench compare BEFORE AFTER``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import MODES
from .report import compare, load_json, render_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["compare"]:
        parser = argparse.ArgumentParser(prog="python -m bench compare", description="Compare two result files.")
        parser.add_argument("before", type=Path)
        parser.add_argument("after", type=Path)
        options = parser.parse_args(args[1:])
        try:
            print(compare(load_json(options.before), load_json(options.after)), end="")
        except (OSError, ValueError, KeyError) as exc:
            print(f"bench compare: {exc}", file=sys.stderr)
            return 2
        return 0

    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark ckpt-eval against the floor (forward passes only) and the one-process-per-checkpoint "
        "design; print a table and write a JSON result. `python -m bench compare A.json B.json` compares two.",
    )
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--out", type=Path, help="JSON result file [default: bench/results/<mode>-<time>.json]")
    parser.add_argument("--checkpoints", type=int, help="N, overriding the mode's")
    parser.add_argument("--repetitions", type=int, help="interleaved repetitions, overriding the mode's")
    parser.add_argument("--seed-checkpoints", type=int, help="processes of the seed design per repetition")
    parser.add_argument("--batch-size", type=int, help="batch size of every run (default 256)")
    parser.add_argument("--batch-sizes", help="comma-separated batch sizes to sweep with ckpt-eval, e.g. 128,256,512")
    options = parser.parse_args(args)

    from .runner import run_benchmark  # imports torch and psycopg: not needed for --help or compare

    mode = MODES[options.mode].with_overrides(
        checkpoints=options.checkpoints,
        repetitions=options.repetitions,
        seed_checkpoints=options.seed_checkpoints,
        batch_size=options.batch_size,
        batch_sizes=tuple(int(x) for x in options.batch_sizes.split(",")) if options.batch_sizes else None,
    )
    if mode.seed_checkpoints > mode.checkpoints:
        mode = mode.with_overrides(seed_checkpoints=mode.checkpoints)
    started = time.perf_counter()
    result = run_benchmark(mode)
    result["config"]["harness_seconds"] = round(time.perf_counter() - started, 1)
    out = options.out or RESULTS / f"{mode.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(result, out)
    print(render_table(result), end="")
    print(f"\nwritten: {out} (harness took {result['config']['harness_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
