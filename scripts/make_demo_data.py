"""Write demo/breast_cancer.csv, the rows of the demo table dataset (ckpt_eval_demo.breast_cancer).

Run once (`.venv/bin/python scripts/make_demo_data.py`); the CSV is committed and the greenplum role
loads it into the demo table. The rows are the TEST split of scikit-learn's embedded breast_cancer data
(samples whose index % 4 == 0, the split of the built-in `breast_cancer` dataset), so a checkpoint
trained on the train split is measured on rows it never saw, and its metrics on the table equal those
on the built-in dataset. Columns: sample_id (the sklearn index, the table's key), the 30 features under
snake_case names (`mean radius` -> mean_radius), and diagnosis ('malignant' or 'benign', sklearn's
target 0 and 1). Floats are written with repr(): the shortest text that reads back to the same double.

`--check` compares the committed file with what this script would write (exit 1 when they differ).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "demo" / "breast_cancer.csv"
TEST_EVERY = 4  # the built-in datasets' test split: index % 4 == 0


def column_name(feature: str) -> str:
    """'mean concave points' -> 'mean_concave_points': a plain lower-case SQL identifier."""
    name = re.sub(r"[^a-z0-9]+", "_", feature.lower()).strip("_")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"cannot make a column name of {feature!r}")
    return name


def render() -> str:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    columns = [column_name(str(feature)) for feature in bunch.feature_names]
    if len(columns) != 30 or len(set(columns)) != 30:
        raise ValueError("expected 30 distinct feature columns")
    class_names = [str(name) for name in bunch.target_names]
    if class_names != ["malignant", "benign"]:
        raise ValueError(f"unexpected class names {class_names}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sample_id", *columns, "diagnosis"])
    for index, (features, target) in enumerate(zip(bunch.data, bunch.target, strict=True)):
        if index % TEST_EVERY == 0:
            writer.writerow([index, *(repr(float(value)) for value in features), class_names[int(target)]])
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file, write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} differs from what scripts/make_demo_data.py writes", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)} ({text.count(chr(10)) - 1} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
