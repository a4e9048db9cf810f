"""The benchmark harness in its smoke mode (tiny sizes, one repetition), so that `make bench` cannot rot.

Only that it runs end to end and reports every figure is checked here; timing goals are the
harness's business and are never asserted in tests.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MEASURED = [
    "ckpt_eval_seconds",
    "ckpt_eval_single_seconds",
    "floor_seconds",
    "multi_model_seconds",
    "multi_model_gflops",
    "first_result_seconds",
    "seed_seconds",
    "startup_seconds",
    "forward_gflops",
    "matmul_gflops",
    "rss_n_mb",
    "rss_wide_mb",
    "writes_per_second",
    "grouped_writes_per_second",
    "table_read_rows_per_second",
    "copy_rows_per_second",
    "table_group_seconds",
    "scale_out_seconds_1",
    "scale_out_seconds_2",
]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    return bench("--mode", "smoke", "--out", str(out)), out


def test_smoke_run_prints_the_table_and_writes_the_json(smoke_run) -> None:
    completed, out = smoke_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "ckpt-eval / floor" in completed.stdout
    assert "seed design / ckpt-eval" in completed.stdout
    assert "table evaluation rows/s / plain COPY rows/s" in completed.stdout
    assert "speed-up of 2 workers over 1" in completed.stdout
    result = json.loads(out.read_text())
    assert result["machine"]["cores"] >= 1
    assert result["machine"]["torch"]
    assert result["machine"]["torch_threads"] == result["config"]["threads"] == 2
    figures = {row["key"]: row for row in result["figures"]}
    for key in MEASURED:
        assert figures[key]["value"] is not None, key
        assert figures[key]["value"] > 0, key
    # A difference of two runs' wall times: at smoke sizes it is mostly noise, so only its presence counts.
    assert math.isfinite(figures["per_checkpoint_ms"]["value"])
    assert math.isfinite(figures["per_checkpoint_besides_forward_ms"]["value"])
    assert figures["tiny_forward_ms"]["value"] > 0
    ratios = {row["key"]: row for row in result["ratios"]}
    assert ratios["ckpt_eval_over_floor"]["value"] > 0
    assert ratios["ckpt_eval_over_floor"]["goal"] == "< 1.0"
    assert ratios["ckpt_eval_single_over_floor"]["goal"] == "<= 1.25"
    assert ratios["multi_model_over_floor"]["value"] > 0
    assert ratios["multi_forward_over_matmul"]["value"] > 0
    assert ratios["seed_over_ckpt_eval"]["value"] > 0
    for key in ("scoring_rows_per_second", "scoring_rss_n_mb", "scoring_rss_4n_mb", "copy_write_rows_per_second",
                "insert_write_rows_per_second"):  # fmt: skip
        assert figures[key]["value"] > 0, key
    assert ratios["copy_over_insert"]["goal"] == ">= 20"
    assert ratios["scoring_rss_4n_over_n"]["value"] > 0


def test_compare_sets_two_results_side_by_side(smoke_run, tmp_path: Path) -> None:
    _, out = smoke_run
    after = json.loads(out.read_text())
    rows = {row["key"]: row for row in after["figures"]}
    rows["floor_seconds"]["value"] = rows["floor_seconds"]["value"] * 2
    after["config"]["checkpoints"] = 99
    changed = tmp_path / "after.json"
    changed.write_text(json.dumps(after))
    completed = bench("compare", str(out), str(changed))
    assert completed.returncode == 0, completed.stderr
    assert "setting differs in checkpoints: 2 -> 99" in completed.stdout
    floor_line = next(line for line in completed.stdout.splitlines() if line.startswith("floor:"))
    assert "2.00" in floor_line
    assert floor_line.rstrip().endswith("worse")


def test_compare_refuses_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    completed = bench("compare", str(other), str(other))
    assert completed.returncode != 0
    assert "not a ckpt-eval bench result" in completed.stderr
