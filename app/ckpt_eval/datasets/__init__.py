"""Dataset sources: what a registry row names, opened as EvaluationData for inference and training.

Modules, one concern each: ``definition`` (DatasetDefinition, the EvaluationData protocol, the
TableReader type), ``memory`` (in-memory arrays, converted and prepared once), ``idx`` (IDX files),
``builtin`` (scikit-learn's digits and breast_cancer), ``tabular`` (chunked CSV parsing, validation,
the multiset fingerprint), ``streamed`` (one read feeds model and fingerprint), ``sources`` (CSV files
and tables). The in-memory kinds are cached per process: many checkpoints share one converted copy.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..architectures import Architecture
from ..errors import CheckpointError, DatasetError, DatasetMissing
from ..text import quoted
from .builtin import DIGITS_TEST_EVERY, load_breast_cancer, load_digits
from .definition import IN_MEMORY_KINDS, KINDS, DatasetDefinition, EvaluationData, TableReader, describe_shape
from .idx import IDX_DATASETS, load_idx_dataset, write_idx
from .memory import ArrayDataset, content_sha256

__all__ = [
    "BUILTIN_DEFINITIONS",
    "DATASET_NAMES",
    "DIGITS_TEST_EVERY",
    "IN_MEMORY_KINDS",
    "KINDS",
    "ArrayDataset",
    "DatasetDefinition",
    "DatasetError",
    "DatasetMissing",
    "EvaluationData",
    "IncompatibleDataset",
    "TableReader",
    "check_compatible",
    "content_sha256",
    "load_breast_cancer",
    "load_dataset",
    "load_digits",
    "open_dataset",
    "write_idx",
]

# The datasets init.sql seeds (the core's registry); DATASET_NAMES keeps v2's three names for the CLI.
BUILTIN_DEFINITIONS = {
    "fashion_mnist": DatasetDefinition("fashion_mnist", "idx", "fashion_mnist"),
    "mnist": DatasetDefinition("mnist", "idx", "mnist"),
    "digits": DatasetDefinition("digits", "digits"),
    "breast_cancer": DatasetDefinition("breast_cancer", "breast_cancer"),
}
DATASET_NAMES = ("fashion_mnist", "mnist", "digits")


class IncompatibleDataset(DatasetError, CheckpointError):
    """The architecture's input or classes do not fit the dataset (exit 65; a CheckpointError for ``train``)."""


def open_dataset(
    definition: DatasetDefinition, data_dir: Path | None, read_table: TableReader | None = None
) -> EvaluationData:
    """The dataset a definition names, validated; in-memory kinds come from a per-process cache."""
    definition.validate()
    if definition.kind in ("table", "csv"):
        from .sources import open_csv, open_table  # pandas only for the runs that stream rows (0.5 s import)

        return open_table(definition, read_table) if definition.kind == "table" else open_csv(definition, data_dir)
    resolved = data_dir.resolve() if data_dir is not None else None
    # Keyed on what the content depends on (not on the stored fingerprint, which a run updates).
    return _load_cached(definition.name, definition.kind, definition.source, definition.split, resolved)


@lru_cache(maxsize=8)
def _load_cached(name: str, kind: str, source: str | None, split: str, data_dir: Path | None) -> ArrayDataset:
    if kind == "digits":
        return load_digits(split, name)
    if kind == "breast_cancer":
        return load_breast_cancer(split, name)
    layout = IDX_DATASETS[str(source)]
    if data_dir is None:
        raise DatasetMissing(f"dataset {quoted(name, 60)} needs a data directory (--data-dir or CKPT_EVAL_DATA_DIR)")
    return load_idx_dataset(layout, data_dir, split, name)


def load_dataset(name: str, data_dir: Path | None, split: str = "test") -> EvaluationData:
    """A built-in dataset by name (v2's API, kept for ``ckpt-eval train``)."""
    if name not in BUILTIN_DEFINITIONS:
        raise DatasetError(f"unknown dataset {quoted(name, 60)} (known: {', '.join(BUILTIN_DEFINITIONS)})")
    if split not in ("test", "train"):
        raise DatasetError(f"unknown split {quoted(split, 30)}")
    base = BUILTIN_DEFINITIONS[name]
    return open_dataset(DatasetDefinition(base.name, base.kind, base.source, split), data_dir)


def check_compatible(architecture: Architecture, data: EvaluationData) -> None:
    """IncompatibleDataset naming both sides when the architecture's input or classes do not fit the data."""
    arch = f"architecture {architecture.name}"
    if tuple(architecture.input_shape) != tuple(data.sample_shape):
        raise IncompatibleDataset(
            f"{arch} expects {describe_shape(architecture.input_shape)} inputs, "
            f"dataset {quoted(data.name, 60)} has {describe_shape(data.sample_shape)}"
        )
    if data.num_classes is not None and data.num_classes != architecture.num_classes:
        raise IncompatibleDataset(
            f"{arch} has {architecture.num_classes} classes, dataset {quoted(data.name, 60)} has {data.num_classes}"
        )
    theirs, ours = data.class_names, architecture.class_names
    if theirs is not None and ours is not None and tuple(theirs) != tuple(ours):
        raise IncompatibleDataset(
            f"{arch} predicts classes ({', '.join(quoted(c, 30) for c in ours)}), dataset {quoted(data.name, 60)} "
            f"labels them ({', '.join(quoted(c, 30) for c in theirs)})"
        )
