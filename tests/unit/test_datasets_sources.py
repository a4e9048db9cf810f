"""Dataset sources beyond IDX: definitions, breast_cancer, CSV files (the streamed path tables share),
the chunker's bounds, the multiset fingerprint, and compatibility checks."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

import ckpt_eval.datasets
from ckpt_eval.architectures import Architecture, ArchitectureSpec, InputSpec, get_architecture
from ckpt_eval.datasets import DatasetDefinition, IncompatibleDataset, check_compatible, open_dataset, tabular
from ckpt_eval.datasets.tabular import MultisetHash, record_chunks
from ckpt_eval.errors import DatasetError, DatasetMissing
from ckpt_eval.evaluate import evaluate_model
from ckpt_eval.train import train_model


@pytest.fixture(autouse=True)
def _clear_dataset_cache():
    ckpt_eval.datasets._load_cached.cache_clear()
    yield
    ckpt_eval.datasets._load_cached.cache_clear()


def tabular_arch(features: int, classes: int = 2, names=("R", "M"), mean=0.0, std=1.0) -> Architecture:
    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, classes))

    spec = ArchitectureSpec("tabular_test", build, InputSpec((features,), mean=mean, std=std), classes, names)
    return Architecture(spec, "tests", "0")


# --------------------------------------------------------------------------- definitions


def test_a_builtin_row_may_repeat_the_kinds_own_class_names() -> None:
    """init.sql seeds breast_cancer with its class names; that row must work."""
    definition = DatasetDefinition("breast_cancer", "breast_cancer", class_names=("malignant", "benign"))
    definition.validate()
    data = open_dataset(definition, None, None)
    assert data.class_names == ("malignant", "benign")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "parquet"}, "unknown kind 'parquet'"),
        ({"kind": "idx", "source": "cifar"}, "an idx dataset's source is its layout"),
        ({"kind": "idx", "source": "mnist", "split": "validation"}, "unknown split 'validation'"),
        ({"kind": "digits", "source": "x.csv"}, "built in and takes no source"),
        ({"kind": "digits", "label_column": "y"}, "takes no feature or label columns"),
        ({"kind": "breast_cancer", "class_names": ("a", "b")}, r"has its own class names \(malignant, benign\)"),
        ({"kind": "digits", "class_names": ("a", "b")}, r"has its own class names \(class indices\)"),
        ({"kind": "csv", "label_column": "y"}, "needs a source"),
        ({"kind": "csv", "source": "/etc/passwd", "label_column": "y"}, "relative to the data directory"),
        ({"kind": "csv", "source": "a/../../x.csv", "label_column": "y"}, "contains '..'"),
        ({"kind": "csv", "source": "x.csv"}, "needs a label column"),
        ({"kind": "table", "source": "t", "label_column": "y"}, "needs its feature columns"),
        ({"kind": "table", "source": "a.b.c", "feature_columns": ("x",), "label_column": "y"}, "schema.table"),
        ({"kind": "table", "source": "t", "feature_columns": ("x", "y"), "label_column": "y"}, "named twice"),
        ({"kind": "table", "source": "t", "feature_columns": ("x\n",), "label_column": "y"}, "has controls"),
        (
            {"kind": "table", "source": "t", "feature_columns": ("x",), "label_column": "y", "split": "train"},
            "no splits",
        ),
        ({"kind": "csv", "source": "x.csv", "label_column": "y", "class_names": ("only",)}, "at least two"),
        ({"kind": "csv", "source": "x.csv", "label_column": "y", "class_names": ("a", "a")}, "distinct"),
    ],
)
def test_definitions_that_cannot_work_are_refused(fields: dict, message: str) -> None:
    definition = DatasetDefinition(name="d", **fields)
    with pytest.raises(DatasetError, match=message) as caught:
        definition.validate()
    assert caught.value.exit_code == 65
    with pytest.raises(DatasetError, match=message):
        open_dataset(definition, Path("/nonexistent"), None)


@pytest.mark.parametrize(
    "definition",
    [
        DatasetDefinition("fashion_mnist", "idx", "fashion_mnist"),
        DatasetDefinition("mnist-train", "idx", "mnist", "train"),
        DatasetDefinition("digits", "digits"),
        DatasetDefinition("bc", "breast_cancer", split="train"),
        DatasetDefinition("s", "csv", "sonar/sonar.csv", label_column="label", class_names=("R", "M")),
        DatasetDefinition("t", "table", "demo.sonar", feature_columns=("a", "b"), label_column="y"),
        DatasetDefinition("unlabeled", "table", "demo.sonar", feature_columns=("a", "b")),
    ],
)
def test_good_definitions_validate(definition: DatasetDefinition) -> None:
    definition.validate()


def test_a_table_without_a_label_column_is_for_scoring_only() -> None:
    definition = DatasetDefinition("unlabeled", "table", "demo.t", feature_columns=("a",))
    with pytest.raises(DatasetError, match="has no label column: it is an input of batch scoring"):
        open_dataset(definition, None, lambda source, columns: None)  # type: ignore[arg-type, return-value]


def test_table_without_a_reader_is_a_dataset_error() -> None:
    definition = DatasetDefinition("t", "table", "demo.t", feature_columns=("a",), label_column="y")
    with pytest.raises(DatasetError, match="needs a database connection"):
        open_dataset(definition, None, None)


# --------------------------------------------------------------------------- breast_cancer


def test_breast_cancer_splits_follow_the_index_rule() -> None:
    reference = load_breast_cancer()
    test = open_dataset(DatasetDefinition("breast_cancer", "breast_cancer"), None)
    train = open_dataset(DatasetDefinition("bc-train", "breast_cancer", split="train"), None)
    index = np.arange(len(reference.target))
    np.testing.assert_array_equal(test.features, reference.data[index % 4 == 0])
    np.testing.assert_array_equal(train.labels, reference.target[index % 4 != 0])
    assert (len(test), len(train)) == (143, 426)
    assert test.sample_shape == (30,)
    assert test.num_classes == 2
    assert test.class_names == ("malignant", "benign")
    assert len(test.fingerprint()) == 64
    assert test.fingerprint() != train.fingerprint()
    ckpt_eval.datasets._load_cached.cache_clear()
    again = open_dataset(DatasetDefinition("breast_cancer", "breast_cancer"), None)
    assert again is not test
    assert again.fingerprint() == test.fingerprint()


def test_in_memory_data_is_prepared_once_per_preparation() -> None:
    data = open_dataset(DatasetDefinition("breast_cancer", "breast_cancer"), None)
    assert open_dataset(DatasetDefinition("breast_cancer", "breast_cancer"), None) is data  # cached per process
    train = load_breast_cancer().data[np.arange(569) % 4 != 0]
    mean, std = tuple(train.mean(axis=0)), tuple(train.std(axis=0))
    scaled = tabular_arch(30, names=("malignant", "benign"), mean=mean, std=std)
    other = tabular_arch(30, names=None, mean=1.0, std=2.0)
    identity = tabular_arch(30, names=None)
    prepared = data.prepared(scaled)
    assert data.prepared(tabular_arch(30, names=("malignant", "benign"), mean=mean, std=std)) is prepared
    expected = (torch.from_numpy(data.features.astype(np.float32)) - torch.tensor(mean, dtype=torch.float32)) / (
        torch.tensor(std, dtype=torch.float32)
    )
    assert torch.equal(prepared, expected)
    assert torch.equal(data.prepared(other), (data.inputs - 1.0) / 2.0)
    assert data.prepared(identity) is data.inputs
    for batch, _ in data.batches(50, scaled):  # views of the prepared tensor: nothing copied per batch
        assert batch.untyped_storage().data_ptr() == prepared.untyped_storage().data_ptr()


def test_training_on_breast_cancer_is_reproducible_and_measured_with_auc() -> None:
    train = open_dataset(DatasetDefinition("bc-train", "breast_cancer", split="train"), None)
    test = open_dataset(DatasetDefinition("breast_cancer", "breast_cancer"), None)
    arch = tabular_arch(
        30, names=("malignant", "benign"), mean=tuple(train.features.mean(0)), std=tuple(train.features.std(0))
    )
    first = train_model(arch, train, epochs=5, seed=1)
    second = train_model(arch, train, epochs=5, seed=1)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    metrics = evaluate_model(first, test, arch)
    assert metrics.accuracy > 0.9
    assert metrics.roc_auc is not None
    assert metrics.roc_auc > 0.95
    assert {m for m, _, _ in metrics.rows()} >= {"roc_auc", "log_loss"}


# --------------------------------------------------------------------------- compatibility


def test_compatibility_names_both_shapes_and_class_lists() -> None:
    digits = open_dataset(DatasetDefinition("digits", "digits"), None)
    cancer = open_dataset(DatasetDefinition("breast_cancer", "breast_cancer"), None)
    with pytest.raises(IncompatibleDataset, match="digits_mlp expects 1x8x8 inputs, dataset 'breast_cancer' has 30 f"):
        check_compatible(get_architecture("digits_mlp"), cancer)
    with pytest.raises(IncompatibleDataset, match="expects 30 features inputs, dataset 'digits' has 1x8x8"):
        check_compatible(tabular_arch(30), digits)
    with pytest.raises(IncompatibleDataset, match=r"predicts classes \('R', 'M'\), .* \('malignant', 'benign'\)"):
        check_compatible(tabular_arch(30, names=("R", "M")), cancer)
    with pytest.raises(IncompatibleDataset, match="has 3 classes, dataset 'breast_cancer' has 2"):
        check_compatible(tabular_arch(30, classes=3, names=None), cancer)
    check_compatible(tabular_arch(30, names=None), cancer)  # an architecture without names takes any


# --------------------------------------------------------------------------- CSV files


def write_csv(path: Path, header: list[str], rows: list[list[object]], newline: str = "\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join("" if v is None else str(v) for v in row) for row in rows]
    path.write_bytes((newline.join(lines) + newline).encode())


def csv_definition(**changes: object) -> DatasetDefinition:
    fields: dict[str, object] = {
        "name": "rocks",
        "kind": "csv",
        "source": "sonar/rocks.csv",
        "label_column": "label",
        "class_names": ("R", "M"),
    }
    fields.update(changes)
    return DatasetDefinition(**fields)  # type: ignore[arg-type]


def sample_rows(n: int = 50, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)), ["M" if rng.random() < 0.5 else "R" for _ in range(n)]


def write_sample(tmp_path: Path, n: int = 50, seed: int = 0, newline: str = "\n") -> tuple[np.ndarray, list[str]]:
    features, labels = sample_rows(n, seed)
    rows = [
        [repr(float(a)), label, repr(float(b)), repr(float(c))]
        for (a, b, c), label in zip(features, labels, strict=True)
    ]
    write_csv(tmp_path / "sonar" / "rocks.csv", ["a", "label", "b", "c"], rows, newline)
    return features, labels


def all_batches(data, batch_size: int = 16, arch=None) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    batches = list(data.batches(batch_size, arch))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_csv_features_and_labels(tmp_path: Path, newline: str) -> None:
    features, labels = write_sample(tmp_path, newline=newline)
    data = open_dataset(csv_definition(), tmp_path)
    assert data.sample_shape == (3,)  # every column but the label, in file order
    assert data.num_classes == 2
    inputs, targets = all_batches(data)
    assert torch.equal(inputs, torch.from_numpy(features.astype(np.float32)))
    assert targets.tolist() == [("R", "M").index(label) for label in labels]
    assert data.n_samples == 50
    chosen = open_dataset(csv_definition(feature_columns=("c", "a")), tmp_path)
    inputs, _ = all_batches(chosen)
    assert torch.equal(inputs, torch.from_numpy(features[:, [2, 0]].astype(np.float32)))


def test_csv_blank_lines_and_quoted_labels(tmp_path: Path) -> None:
    path = tmp_path / "sonar" / "rocks.csv"
    path.parent.mkdir(parents=True)
    path.write_text('a,label\n1.5,"rock, small"\n2,"mine\nlarge"\n\n3,"say ""hi"""\n\n')
    data = open_dataset(csv_definition(class_names=("rock, small", "mine\nlarge", 'say "hi"')), tmp_path)
    inputs, targets = all_batches(data)
    assert inputs.flatten().tolist() == [1.5, 2.0, 3.0]
    assert targets.tolist() == [0, 1, 2]


def test_csv_fingerprint_ignores_row_order_but_not_content(tmp_path: Path) -> None:
    write_sample(tmp_path)
    path = tmp_path / "sonar" / "rocks.csv"
    original = open_dataset(csv_definition(), tmp_path).fingerprint()
    header, *lines = path.read_text().splitlines()
    random.Random(1).shuffle(lines)
    path.write_text("\n".join([header, *lines]) + "\n")
    assert open_dataset(csv_definition(), tmp_path).fingerprint() == original
    path.write_text("\n".join([header, *lines, lines[0]]) + "\n")  # one row twice
    doubled = open_dataset(csv_definition(), tmp_path).fingerprint()
    assert doubled != original
    assert int(doubled[32:], 16) == 51
    lines[3] = lines[3].replace(",", ",1", 1)  # one value changed
    path.write_text("\n".join([header, *lines]) + "\n")
    assert open_dataset(csv_definition(), tmp_path).fingerprint() not in (original, doubled)
    assert open_dataset(csv_definition(feature_columns=("a", "b")), tmp_path).fingerprint() != original


def test_fingerprint_comes_from_the_evaluation_pass(tmp_path: Path) -> None:
    write_sample(tmp_path)
    data = open_dataset(csv_definition(), tmp_path)
    reference = open_dataset(csv_definition(), tmp_path).fingerprint()  # a hashing-only pass
    list(data.batches(7))
    (tmp_path / "sonar" / "rocks.csv").unlink()  # nothing left to read: the pass's own hash is used
    assert data.fingerprint() == reference


def test_an_interrupted_pass_leaves_no_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tabular, "CHUNK_BYTES", 256)
    write_sample(tmp_path, n=200)
    data = open_dataset(csv_definition(), tmp_path)
    batches = data.batches(8)
    next(batches)
    batches.close()
    assert data.n_samples is None
    assert data.fingerprint() == open_dataset(csv_definition(), tmp_path).fingerprint()
    assert data.n_samples == 200


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (7, "b", "", r"NULL feature in column 'b', row 7"),
        (3, "c", "abc", r"non-numeric value 'abc' in column 'c', row 3"),
        (12, "a", "inf", r"non-finite value 'inf' in column 'a', row 12"),
        (12, "a", "NaN", r"non-finite value 'NaN' in column 'a', row 12"),
        (1, "a", "1e39", r"value '1e39' is beyond float32's range in column 'a', row 1"),
        (30, "label", "X", r"unknown label 'X' in column 'label', row 30"),
        (30, "label", "", r"NULL label in column 'label', row 30"),
    ],
)
def test_csv_bad_values_name_column_and_row(tmp_path: Path, row: int, column: str, value: str, message: str) -> None:
    features, labels = sample_rows()
    header = ["a", "label", "b", "c"]
    rows = [[float(a), label, float(b), float(c)] for (a, b, c), label in zip(features, labels, strict=True)]
    rows[row - 1][header.index(column)] = value
    rows[row + 3][header.index(column)] = value  # a later bad row is not the one named
    write_csv(tmp_path / "sonar" / "rocks.csv", header, rows)
    data = open_dataset(csv_definition(), tmp_path)
    with pytest.raises(DatasetError, match=message) as caught:
        all_batches(data)
    assert str(caught.value).startswith("dataset 'rocks' (file 'sonar/rocks.csv'): ")


def test_the_first_bad_row_wins_across_columns(tmp_path: Path) -> None:
    write_csv(tmp_path / "sonar" / "rocks.csv", ["a", "b", "label"], [[1, 2, "R"], [1, "", "M"], ["x", 2, "R"]])
    with pytest.raises(DatasetError, match=r"NULL feature in column 'b', row 2"):
        all_batches(open_dataset(csv_definition(), tmp_path))


def test_csv_integer_labels(tmp_path: Path) -> None:
    write_csv(tmp_path / "sonar" / "rocks.csv", ["a", "label"], [[1, 0], [2, 1], [3, 1]])
    data = open_dataset(csv_definition(class_names=None), tmp_path)
    assert data.num_classes is None
    assert all_batches(data)[1].tolist() == [0, 1, 1]
    write_csv(tmp_path / "sonar" / "rocks.csv", ["a", "label"], [[1, 0], [2, 1.5]])
    with pytest.raises(DatasetError, match=r"label '1.5' in column 'label', row 2 is not a class index"):
        all_batches(open_dataset(csv_definition(class_names=None), tmp_path))
    write_csv(tmp_path / "sonar" / "rocks.csv", ["a", "label"], [[1, 0], [2, 2]])
    with pytest.raises(DatasetError, match=r"label 2 .* row 2 is out of range 0\.\.1 \(architecture tabular_test\)"):
        all_batches(open_dataset(csv_definition(class_names=None), tmp_path), arch=tabular_arch(1, names=None))


def test_csv_missing_column_file_and_escapes(tmp_path: Path) -> None:
    write_sample(tmp_path)
    with pytest.raises(DatasetError, match=r"no column 'd', 'lbl' \(columns: 'a', 'label', 'b', 'c'\)"):
        open_dataset(csv_definition(feature_columns=("a", "d"), label_column="lbl"), tmp_path)
    with pytest.raises(DatasetMissing, match="not found"):
        open_dataset(csv_definition(source="sonar/absent.csv"), tmp_path)
    with pytest.raises(DatasetMissing, match="data directory"):
        open_dataset(csv_definition(), None)
    outside = tmp_path / "outside.csv"
    outside.write_text("a,label\n1,R\n")
    (tmp_path / "data").mkdir()
    os.symlink(outside, tmp_path / "data" / "link.csv")
    with pytest.raises(DatasetError, match="leads outside the data directory"):
        open_dataset(csv_definition(source="link.csv"), tmp_path / "data")


def test_csv_ragged_rows_and_unterminated_quotes(tmp_path: Path) -> None:
    path = tmp_path / "sonar" / "rocks.csv"
    path.parent.mkdir(parents=True)
    path.write_text('a,label\n1,R\n2,"M\n')
    with pytest.raises(DatasetError, match="row 2 ends inside a quoted field"):
        all_batches(open_dataset(csv_definition(), tmp_path))
    path.write_text("a,label\n1,R,extra,fields\n2,M\n")
    with pytest.raises(DatasetError, match=r"rows 1\.\.2 do not have 2 fields each"):
        all_batches(open_dataset(csv_definition(), tmp_path))


# --------------------------------------------------------------------------- chunking and hashing


def test_batches_cross_chunk_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tabular, "CHUNK_BYTES", 300)
    monkeypatch.setattr(tabular, "CHUNK_ROWS", 5)
    features, _labels = write_sample(tmp_path, n=103)
    sizes = [len(y) for _, y in open_dataset(csv_definition(), tmp_path).batches(16)]
    assert sizes == [16] * 6 + [7]
    inputs, targets = all_batches(open_dataset(csv_definition(), tmp_path), batch_size=16)
    assert torch.equal(inputs, torch.from_numpy(features.astype(np.float32)))
    assert len(targets) == 103


def test_record_chunks_do_not_depend_on_block_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tabular, "CHUNK_BYTES", 64)
    monkeypatch.setattr(tabular, "CHUNK_ROWS", 4)
    records = [f'{i},"x{i}\n{"q" * (i % 7)}",""""'.encode() for i in range(60)]
    data = b"\n".join(records) + b"\n"
    rng = random.Random(0)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 40)))
        blocks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        chunks = list(record_chunks(blocks, "t"))
        assert [r for chunk in chunks for r in chunk] == records
        assert all(len(chunk) <= 4 for chunk in chunks)


def test_a_record_longer_than_the_bound_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tabular, "CHUNK_BYTES", 100)
    monkeypatch.setattr(tabular, "MAX_RECORD_BYTES", 100)
    blocks = [b"1,2\n3,4\n", b"5" * 60, b"6" * 60, b"\n"]
    with pytest.raises(DatasetError, match="t: row 3 is longer than 100 bytes"):
        list(record_chunks(blocks, "t"))


def test_multiset_hash() -> None:
    def digest(records: list[bytes], context: bytes = b"c") -> str:
        hasher = MultisetHash(context)
        hasher.add(records)
        return hasher.hexdigest()

    rows = [b"1,2,R", b"3,4,M", b"5,6,R"]
    assert digest(rows) == digest(rows[::-1]) == digest([rows[1], rows[2], rows[0]])
    assert digest(rows + rows[:1]) != digest(rows)
    assert digest(rows[:1] * 2) != digest(rows[1:2] * 2)  # a duplicate is not a coincidence of sums
    assert digest(rows, b"other") != digest(rows)
    assert digest([]) == "0" * 64
    split = MultisetHash(b"c")
    split.add(rows[:1])
    split.add(rows[1:])
    assert split.hexdigest() == digest(rows)


def test_the_cache_ignores_the_stored_fingerprint() -> None:
    # A run updates the registry's fingerprint; the next pair on the same dataset reuses the loaded copy.
    first = open_dataset(DatasetDefinition("digits", "digits"), None)
    again = open_dataset(DatasetDefinition("digits", "digits", fingerprint=first.fingerprint()), None)
    assert again is first


def test_image_runs_do_not_import_pandas() -> None:
    # pandas costs about half a second of start-up; only runs that stream rows (csv, table) import it.
    code = "import sys, ckpt_eval.job, ckpt_eval.train, ckpt_eval.db.table_reader; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
