"""The sizes of a benchmark run: smoke (seconds, for the test suite), quick (about 2 minutes), full."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    checkpoints: int  # N: checkpoints evaluated by ckpt-eval and by the floor
    images: int  # evaluation images (28x28, fashion_mnist layout)
    repetitions: int  # interleaved repetitions of ckpt-eval / floor / seed design
    seed_checkpoints: int  # checkpoints the one-process-per-checkpoint design evaluates per repetition
    tiny_images: int  # the dataset of the per-checkpoint fixed-cost run (forward pass negligible)
    tiny_checkpoints: int
    wide_factor: int  # the RSS run evaluates wide_factor * N checkpoints
    write_records: int  # results written for the write-throughput figure
    table_rows: int  # rows of the table dataset (once table datasets exist)
    scoring_rows: int  # N rows of the scoring input (memory is also measured at 4N)
    scoring_write_rows: int  # prediction rows written by COPY and by executemany INSERT
    batch_size: int = 512  # ckpt-eval's default
    group_size: int = 8  # ckpt-eval's default: pairs evaluated together, one pass over the data
    threads: int = 2
    batch_sizes: tuple[int, ...] = ()  # batch sizes swept by ckpt-eval (empty: none)
    scale_workers: tuple[int, ...] = (1, 2, 4)  # concurrent workers (1 torch thread each) of the scale-out run

    def with_overrides(self, **changes: object) -> Mode:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


MODES = {
    "smoke": Mode(
        name="smoke",
        checkpoints=2,
        images=512,
        repetitions=1,
        seed_checkpoints=1,
        tiny_images=10,
        tiny_checkpoints=3,
        wide_factor=2,
        write_records=5,
        table_rows=1000,
        scoring_rows=2_000,
        scoring_write_rows=2_000,
        scale_workers=(1, 2),
    ),
    "quick": Mode(
        name="quick",
        checkpoints=4,
        images=10_000,
        repetitions=3,
        seed_checkpoints=2,
        tiny_images=10,
        tiny_checkpoints=30,
        wide_factor=4,
        write_records=100,
        table_rows=100_000,
        scoring_rows=100_000,
        scoring_write_rows=100_000,
    ),
    "full": Mode(
        name="full",
        checkpoints=20,
        images=10_000,
        repetitions=5,
        seed_checkpoints=20,
        tiny_images=10,
        tiny_checkpoints=100,
        wide_factor=4,
        write_records=500,
        table_rows=1_000_000,
        scoring_rows=1_000_000,
        scoring_write_rows=100_000,
        batch_sizes=(128, 256, 512, 1024),
    ),
}
