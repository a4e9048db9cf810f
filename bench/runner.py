"""One benchmark run: build the workspace, run the experiments interleaved, collect figures and ratios."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict

from .config import Mode
from .fixture import ARCH, CKPT_EVAL, REPO, BenchDatabase, Workspace
from .machine import describe_machine
from .procs import Measured, run_measured
from .report import Figure, document
from .scale_out import ScaleOut, run_workers
from .scoring import measure_scoring
from .seed_design import run_seed_design
from .table_memory import measure as measure_table
from .writes import measure_writes

CLAIM_LINE = "evaluating checkpoint"  # logged by ckpt-eval when it has claimed a checkpoint
DONE_LINE = ": accuracy "  # logged once a checkpoint's result is recorded


def ckpt_eval_run(
    database: BenchDatabase, mode: Mode, batch_size: int | None = None, group_size: int | None = None
) -> Measured:
    database.reset()
    argv = [
        CKPT_EVAL,
        "run",
        "--torch-threads",
        str(mode.threads),
        "--batch-size",
        str(batch_size or mode.batch_size),
        "--log-format",
        "json",
    ]
    if group_size is not None:
        argv += ["--group-size", str(group_size)]
    measured = run_measured(argv, database.ckpt_eval_env(), cwd=database.workspace.root, ok_codes=(0, 3))
    expected = len(database.checkpoints)
    succeeded = database.count("SELECT count(*) FROM ckpt_eval.evaluation_runs WHERE status = 'succeeded'")
    if succeeded != expected:
        raise RuntimeError(f"ckpt-eval recorded {succeeded} successful runs of {expected}:\n{measured.stderr[-3000:]}")
    return measured


def floor_run(database: BenchDatabase, mode: Mode, matmul_size: int) -> dict[str, float]:
    argv = [
        sys.executable,
        "-m",
        "bench.floor",
        "--data-dir",
        str(database.data_dir),
        "--batch-size",
        str(mode.batch_size),
        "--threads",
        str(mode.threads),
        "--matmul-size",
        str(matmul_size),
        "--group-size",
        str(mode.group_size),
        *[str(path) for path in database.checkpoints],
    ]
    measured = run_measured(argv, database.workspace.base_env, cwd=REPO)
    result = json.loads(measured.stdout)
    result["max_rss_mb"] = measured.max_rss_mb
    return dict(result)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _rate(result: dict) -> float:
    return float(result["rows"]) / float(result["seconds"])


def run_benchmark(mode: Mode, progress: Callable[[str], None] = _log) -> dict:
    n = mode.checkpoints
    total_files = max(n * mode.wide_factor, mode.tiny_checkpoints, mode.seed_checkpoints, n)
    progress(f"mode {mode.name}: generating {total_files} checkpoints, datasets and a PostgreSQL cluster")
    machine = describe_machine(mode.threads)
    workspace = Workspace.create(total_files)
    try:
        main = workspace.database("main", n, mode.images)
        seed = workspace.database("seed", mode.seed_checkpoints, mode.images)
        tiny = workspace.database("tiny", mode.tiny_checkpoints, mode.tiny_images)
        one = workspace.database("one", 1, mode.tiny_images)
        wide = workspace.database("wide", n * mode.wide_factor, mode.images)
        writes = workspace.database("writes", min(50, total_files), mode.tiny_images)
        matmul_size = 256 if mode.name == "smoke" else 1024

        runs: list[Measured] = []
        singles: list[Measured] = []
        floors: list[dict[str, float]] = []
        seeds: list[list[Measured]] = []
        tinies: list[Measured] = []
        ones: list[Measured] = []
        tiny_floors: list[dict[str, float]] = []
        for rep in range(mode.repetitions):
            progress(f"repetition {rep + 1}/{mode.repetitions}: ckpt-eval run, N={n}")
            runs.append(ckpt_eval_run(main, mode, group_size=mode.group_size))
            progress(f"repetition {rep + 1}/{mode.repetitions}: floor, and the multi-model pass in the same process")
            floors.append(floor_run(main, mode, matmul_size))
            progress(f"repetition {rep + 1}/{mode.repetitions}: seed design, {mode.seed_checkpoints} processes")
            seeds.append(run_seed_design(seed, mode.seed_checkpoints, mode.batch_size, mode.threads))
            progress(f"repetition {rep + 1}/{mode.repetitions}: per-checkpoint cost, {mode.tiny_checkpoints} tiny")
            tinies.append(ckpt_eval_run(tiny, mode, group_size=mode.group_size))
            ones.append(ckpt_eval_run(one, mode, group_size=mode.group_size))
            tiny_floors.append(floor_run(tiny, mode, 64))
            progress(f"repetition {rep + 1}/{mode.repetitions}: ckpt-eval run, N={n}, one checkpoint at a time")
            singles.append(ckpt_eval_run(main, mode, group_size=1))
        progress(f"peak RSS at {mode.wide_factor}N = {n * mode.wide_factor} checkpoints")
        wide_run = ckpt_eval_run(wide, mode)
        sweep: dict[int, list[float]] = {}
        for rep in range(min(mode.repetitions, 2) if mode.batch_sizes else 0):
            for size in mode.batch_sizes:
                progress(f"batch-size sweep {rep + 1}: --batch-size {size}")
                sweep.setdefault(size, []).append(ckpt_eval_run(main, mode, size, mode.group_size).wall)
        scale: dict[int, list[ScaleOut]] = {}
        for rep in range(min(mode.repetitions, 2)):
            for workers in mode.scale_workers:
                progress(f"scale-out {rep + 1}: {workers} worker(s), 1 thread each, N={n}")
                scale.setdefault(workers, []).append(run_workers(main, workers, mode.batch_size))
        progress(f"result writes: {mode.write_records} finishes")
        write_figures = measure_writes(writes, mode.write_records, mode.group_size)
        progress(f"table dataset: {mode.table_rows:,} rows, plain COPY vs evaluation (one torch thread)")
        table = {r["case"]: r for r in measure_table([mode.table_rows], threads=1)}
        progress(f"batch scoring: {mode.scoring_rows:,} and {4 * mode.scoring_rows:,} rows; COPY vs INSERT")
        scoring = measure_scoring(
            workspace.database("scoring", 0, mode.tiny_images), mode.scoring_rows, mode.scoring_write_rows, mode.threads
        )
    finally:
        workspace.destroy()

    machine.update(torch=floors[0]["torch"], torch_interop_threads=floors[0]["interop_threads"])
    seed_per_ckpt = [statistics.mean(m.wall for m in rep) for rep in seeds]
    figures = [
        Figure(
            "ckpt_eval_seconds",
            f"ckpt-eval run, N={n}, groups of {mode.group_size} (wall, incl. start-up)",
            "s",
            [m.wall for m in runs],
        ),
        Figure(
            "ckpt_eval_single_seconds",
            f"ckpt-eval run, N={n}, --group-size 1 (one checkpoint at a time)",
            "s",
            [m.wall for m in singles],
        ),
        Figure(
            "floor_seconds", f"floor: forward passes of N={n} models, warm", "s", [f["forward_seconds"] for f in floors]
        ),
        Figure(
            "seed_seconds",
            f"seed design: 1 process per checkpoint, N={n}",
            "s",
            [s * n for s in seed_per_ckpt],
            note=None
            if mode.seed_checkpoints == n
            else f"{mode.seed_checkpoints} processes timed, x N/{mode.seed_checkpoints}",
        ),
        Figure("seed_seconds_per_checkpoint", "seed design: one process", "s", seed_per_ckpt),
        Figure(
            "multi_model_seconds",
            f"ckpt-eval's multi-model pass, N={n} in groups of {mode.group_size}, warm",
            "s",
            [f["multi_seconds"] for f in floors],
            note="evaluate_models in the floor's process: forward, loss, argmax, metrics",
        ),
        Figure(
            "startup_seconds",
            "start-up to first claim",
            "s",
            [m.first(CLAIM_LINE) or 0.0 for m in runs + tinies],
            goal="< 1.2 s",
        ),
        Figure(
            "first_result_seconds",
            "start-up to first recorded result",
            "s",
            [m.first(DONE_LINE) or 0.0 for m in tinies],
            note="includes importing torch (about 1.4 s on its own)",
        ),
        Figure(
            "per_checkpoint_ms",
            f"per-checkpoint fixed cost ({mode.tiny_images} images)",
            "ms",
            [1000 * (m.wall - o.wall) / (len(tiny.checkpoints) - 1) for m, o in zip(tinies, ones, strict=True)]
            if len(tiny.checkpoints) > 1
            else [],
            note=f"(run of {mode.tiny_checkpoints} - run of 1) / {mode.tiny_checkpoints - 1}, same repetition",
        ),
        Figure(
            "tiny_forward_ms",
            f"forward pass of one checkpoint over the {mode.tiny_images} images (floor)",
            "ms",
            [1000 * f["forward_seconds"] / f["models"] for f in tiny_floors],
        ),
        Figure(
            "per_checkpoint_besides_forward_ms",
            "per-checkpoint fixed cost besides the forward pass",
            "ms",
            [
                1000 * ((m.wall - o.wall) / (len(tiny.checkpoints) - 1) - f["forward_seconds"] / f["models"])
                for m, o, f in zip(tinies, ones, tiny_floors, strict=True)
            ]
            if len(tiny.checkpoints) > 1
            else [],
            goal="< 10 ms",
            note="the line above minus the floor's forward pass of the same checkpoints, same repetition",
        ),
        Figure(
            "forward_gflops",
            "forward pass GFLOP/s (floor)",
            "GFLOP/s",
            [f["forward_gflops"] for f in floors],
            higher_is_better=True,
        ),
        Figure(
            "multi_model_gflops",
            "forward pass GFLOP/s (ckpt-eval's multi-model pass)",
            "GFLOP/s",
            [f["multi_gflops"] for f in floors],
            higher_is_better=True,
        ),
        Figure(
            "ckpt_eval_gflops",
            "forward FLOPs / ckpt-eval wall",
            "GFLOP/s",
            [f["flops"] / m.wall / 1e9 for f, m in zip(floors, runs, strict=True)],
            higher_is_better=True,
        ),
        Figure(
            "matmul_gflops",
            f"fp32 matmul {matmul_size}x{matmul_size} GFLOP/s (attained)",
            "GFLOP/s",
            [f["matmul_gflops"] for f in floors],
            higher_is_better=True,
        ),
        Figure("rss_n_mb", f"peak RSS, N={n}", "MB", [m.max_rss_mb for m in runs]),
        Figure("rss_wide_mb", f"peak RSS, {mode.wide_factor}N={n * mode.wide_factor}", "MB", [wide_run.max_rss_mb]),
        Figure("ckpt_eval_minor_faults", "minor page faults, ckpt-eval run", "", [float(m.minor_faults) for m in runs]),
        Figure(
            "floor_minor_faults", "minor page faults, floor forward", "", [float(f["minor_faults"]) for f in floors]
        ),
        Figure("ckpt_eval_system_seconds", "system CPU, ckpt-eval run", "s", [m.system for m in runs]),
        Figure("floor_system_seconds", "system CPU, floor forward", "s", [f["system_seconds"] for f in floors]),
        Figure(
            "table_read_rows_per_second",
            f"table dataset evaluated ({mode.table_rows:,} rows x 60 columns: read, parse, check, infer, hash)",
            "rows/s",
            [_rate(table["evaluate"])],
            higher_is_better=True,
        ),
        Figure(
            "copy_rows_per_second",
            "plain COPY ... TO STDOUT of the same rows",
            "rows/s",
            [_rate(table["copy"])],
            higher_is_better=True,
        ),
        Figure("table_peak_rss_mb", "peak RSS evaluating the table", "MB", [float(table["evaluate"]["peak_rss_mb"])]),
        Figure(
            "table_group_seconds",
            f"the same table, {mode.group_size} models evaluated in one pass (one read)",
            "s",
            [float(table["group"]["seconds"])],
            note=f"one model: {float(table['evaluate']['seconds']):.1f} s",
        ),
        Figure(
            "writes_per_second",
            "result writes (run + 46 metric rows), one transaction each",
            "/s",
            [write_figures["results_per_second"]],
            higher_is_better=True,
        ),
        Figure(
            "grouped_writes_per_second",
            f"result writes, {mode.group_size} per transaction (a group's pass, each fenced)",
            "/s",
            [write_figures["grouped_results_per_second"]],
            higher_is_better=True,
        ),
        Figure(
            "scoring_rows_per_second",
            f"ckpt-eval score, {mode.scoring_rows:,} rows x 30 features, end to end (start-up included)",
            "rows/s",
            [scoring.rows / scoring.runs[scoring.rows].wall],
            higher_is_better=True,
        ),
        Figure(
            "scoring_rss_n_mb",
            f"peak RSS of ckpt-eval score, {mode.scoring_rows:,} rows",
            "MB",
            [scoring.runs[scoring.rows].max_rss_mb],
        ),
        Figure(
            "scoring_rss_4n_mb",
            f"peak RSS of ckpt-eval score, {4 * mode.scoring_rows:,} rows",
            "MB",
            [scoring.runs[4 * scoring.rows].max_rss_mb],
        ),
        Figure(
            "copy_write_rows_per_second",
            f"predictions written by COPY FROM STDIN ({scoring.write_rows:,} rows, one transaction)",
            "rows/s",
            [scoring.write_rows / scoring.copy_seconds],
            higher_is_better=True,
        ),
        Figure(
            "insert_write_rows_per_second",
            f"the same rows by executemany INSERT ({scoring.write_rows:,} rows, one transaction)",
            "rows/s",
            [scoring.write_rows / scoring.insert_seconds],
            higher_is_better=True,
        ),
    ]
    for workers, measured in sorted(scale.items()):
        figures.append(
            Figure(
                f"scale_out_seconds_{workers}",
                f"{workers} worker(s) x 1 thread, N={n} (wall)",
                "s",
                [m.wall for m in measured],
            )
        )
        figures.append(
            Figure(
                f"scale_out_lost_races_{workers}",
                f"{workers} worker(s): claims lost to another worker",
                "",
                [float(m.lost_races) for m in measured],
            )
        )
    for size, walls in sorted(sweep.items()):
        figures.append(
            Figure(f"ckpt_eval_seconds_batch_{size}", f"ckpt-eval run, N={n}, --batch-size {size}", "s", walls)
        )

    ratios = [
        Figure(
            "ckpt_eval_over_floor",
            "ckpt-eval / floor",
            "x",
            [m.wall / f["forward_seconds"] for m, f in zip(runs, floors, strict=True)],
            goal="< 1.0",
            note="the whole run, start-up included, against forward passes alone",
        ),
        Figure(
            "ckpt_eval_single_over_floor",
            "ckpt-eval --group-size 1 / floor",
            "x",
            [m.wall / f["forward_seconds"] for m, f in zip(singles, floors, strict=True)],
            goal="<= 1.25",
        ),
        Figure(
            "seed_over_ckpt_eval",
            "seed design / ckpt-eval",
            "x",
            [s * n / m.wall for s, m in zip(seed_per_ckpt, runs, strict=True)],
            goal=">= 5",
            higher_is_better=True,
        ),
        Figure(
            "multi_model_over_floor",
            "multi-model pass / floor",
            "x",
            [f["multi_seconds"] / f["forward_seconds"] for f in floors],
            goal="< 1.0",
        ),
        Figure(
            "forward_over_matmul",
            "floor forward GFLOP/s / matmul GFLOP/s",
            "x",
            [f["forward_gflops"] / f["matmul_gflops"] for f in floors],
            higher_is_better=True,
        ),
        Figure(
            "multi_forward_over_matmul",
            "multi-model pass GFLOP/s / matmul GFLOP/s",
            "x",
            [f["multi_gflops"] / f["matmul_gflops"] for f in floors],
            goal="> 0.5",
            higher_is_better=True,
        ),
        Figure(
            "rss_wide_over_n",
            f"peak RSS {mode.wide_factor}N / N",
            "x",
            [wide_run.max_rss_mb / statistics.median(m.max_rss_mb for m in runs)],
        ),
        Figure(
            "table_group_over_one",
            f"table: {mode.group_size} models in one pass / one model",
            "x",
            [float(table["group"]["seconds"]) / float(table["evaluate"]["seconds"])],
            note=f"{mode.group_size} separate passes: {mode.group_size}x",
        ),
        Figure(
            "table_read_over_copy",
            "table evaluation rows/s / plain COPY rows/s",
            "x",
            [_rate(table["evaluate"]) / _rate(table["copy"])],
            higher_is_better=True,
        ),
    ]
    ratios += [
        Figure(
            "copy_over_row_inserts",
            "prediction writes: COPY rows/s / one INSERT per row rows/s",
            "x",
            [scoring.row_insert_seconds / scoring.copy_seconds],
            higher_is_better=True,
        ),
        Figure(
            "copy_over_insert",
            "prediction writes: COPY rows/s / executemany INSERT rows/s",
            "x",
            [scoring.insert_seconds / scoring.copy_seconds],
            goal=">= 20",
            higher_is_better=True,
            note="both pay the output's primary-key index, about 1.1 us a row here",
        ),
        Figure(
            "scoring_rss_4n_over_n",
            "ckpt-eval score peak RSS: 4N rows / N rows",
            "x",
            [scoring.runs[4 * scoring.rows].max_rss_mb / scoring.runs[scoring.rows].max_rss_mb],
            goal="about 1 (flat)",
        ),
    ]
    single = scale.get(1)
    for workers, measured in sorted(scale.items()):
        if single and workers > 1:
            ratios.append(
                Figure(
                    f"scale_out_speedup_{workers}",
                    f"speed-up of {workers} workers over 1 (1 thread each)",
                    "x",
                    [one.wall / many.wall for one, many in zip(single, measured, strict=False)],
                    higher_is_better=True,
                )
            )
    config = {**asdict(mode), "mode": mode.name, "arch": ARCH, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return document(machine, config, figures, ratios)
