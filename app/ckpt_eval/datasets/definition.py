"""What a dataset is (one row of the registry) and what every source hands to inference.

``DatasetDefinition`` is pure data with a ``validate()`` that refuses a definition that cannot
work before anything is read; ``EvaluationData`` is the protocol every source implements
(in-memory arrays, streamed CSV files, streamed tables); ``TableReader`` is the one callable
through which a table's rows arrive (db/table_reader.py), so this package never touches SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Protocol

from ..errors import DatasetError
from ..text import quoted

if TYPE_CHECKING:
    import torch

    from ..architectures import Architecture

IN_MEMORY_KINDS = ("idx", "digits", "breast_cancer")
KINDS = (*IN_MEMORY_KINDS, "csv", "table")  # parquet: not shipped (see README "Dataset kinds")
SPLITS = ("test", "train")
# The names an in-memory kind's labels already have; a registry row may repeat them (init.sql does).
BUILTIN_CLASS_NAMES = {"breast_cancer": ("malignant", "benign")}
IDX_LAYOUTS = ("fashion_mnist", "mnist")
MAX_COLUMNS = 10_000
MAX_NAME = 63  # PostgreSQL's identifier length
_IDENTIFIER = re.compile(r"[^\x00-\x1f\x7f]{1,63}")

# reader(source, columns): a context manager yielding raw CSV blocks (not line aligned) of
# COPY (SELECT columns FROM source) TO STDOUT WITH (FORMAT csv); DatasetError for a missing table,
# column or grant.
TableReader = Callable[[str, Sequence[str]], AbstractContextManager[Iterable[bytes]]]


@dataclass(frozen=True)
class DatasetDefinition:
    """One row of ``ckpt_eval.datasets``: untrusted text from the database, checked by ``validate``."""

    name: str
    kind: str
    source: str | None = None
    split: str = "test"
    feature_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    class_names: tuple[str, ...] | None = None
    fingerprint: str | None = None

    def validate(self) -> None:
        """DatasetError (exit 65) naming the dataset and the field when the definition cannot work."""
        what = f"dataset {quoted(self.name, 60)}"
        if not self.name:
            raise DatasetError("a dataset needs a name")
        if self.kind not in KINDS:
            raise DatasetError(f"{what}: unknown kind {quoted(self.kind, 30)} (known: {', '.join(KINDS)})")
        if self.kind in IN_MEMORY_KINDS:
            if self.split not in SPLITS:
                raise DatasetError(f"{what}: unknown split {quoted(self.split, 30)} (known: {', '.join(SPLITS)})")
            if self.kind == "idx" and self.source not in IDX_LAYOUTS:
                raise DatasetError(
                    f"{what}: an idx dataset's source is its layout ({', '.join(IDX_LAYOUTS)}), "
                    f"not {quoted(self.source, 60)}"
                )
            if self.kind != "idx" and self.source:
                raise DatasetError(f"{what}: kind {self.kind} is built in and takes no source")
            if self.feature_columns or self.label_column:
                raise DatasetError(f"{what}: kind {self.kind} takes no feature or label columns")
            own = BUILTIN_CLASS_NAMES.get(self.kind)
            if self.class_names is not None and tuple(self.class_names) != own:
                shown = ", ".join(own) if own else "class indices"
                raise DatasetError(f"{what}: kind {self.kind} has its own class names ({shown})")
            return
        if self.split not in ("test", ""):
            raise DatasetError(f"{what}: kind {self.kind} has no splits (split {quoted(self.split, 30)})")
        if not self.source:
            raise DatasetError(f"{what}: kind {self.kind} needs a source")
        if self.kind == "csv":
            _check_relative_path(what, self.source)
        else:
            _check_table_name(what, self.source)
        if not self.label_column and self.kind != "table":
            raise DatasetError(f"{what}: kind {self.kind} needs a label column")
        if self.kind == "table" and not self.feature_columns:
            raise DatasetError(f"{what}: kind table needs its feature columns")
        # A table without a label column is an input of batch scoring only (evaluating it is refused).
        columns = (*(self.feature_columns or ()), *((self.label_column,) if self.label_column else ()))
        for column in columns:
            if not _IDENTIFIER.fullmatch(column):
                raise DatasetError(f"{what}: column name {quoted(column, 80)} is empty, too long or has controls")
        if len(set(columns)) != len(columns):
            duplicate = next(c for c in columns if columns.count(c) > 1)
            raise DatasetError(f"{what}: column {quoted(duplicate, 60)} is named twice")
        if len(columns) > MAX_COLUMNS:
            raise DatasetError(f"{what}: {len(columns)} columns, at most {MAX_COLUMNS}")
        if self.class_names is not None:
            if len(self.class_names) < 2:
                raise DatasetError(f"{what}: class names need at least two classes")
            if len(set(self.class_names)) != len(self.class_names) or "" in self.class_names:
                raise DatasetError(f"{what}: class names must be distinct and non-empty")


def _check_relative_path(what: str, source: str) -> None:
    path = PurePosixPath(source)
    if source.startswith("/") or "\\" in source or "\x00" in source:
        raise DatasetError(f"{what}: source {quoted(source, 120)} must be a path relative to the data directory")
    if ".." in path.parts:
        raise DatasetError(f"{what}: source {quoted(source, 120)} contains '..'")


def _check_table_name(what: str, source: str) -> None:
    parts = source.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise DatasetError(f"{what}: source {quoted(source, 120)} must be a table name or schema.table")


def split_table_name(source: str) -> tuple[str, ...]:
    """("schema", "table") or ("table",): the parts of a validated source, each quoted separately later."""
    return tuple(source.split("."))


class EvaluationData(Protocol):
    """What inference and training consume; every dataset kind implements it."""

    name: str
    kind: str
    sample_shape: tuple[int, ...]
    num_classes: int | None
    class_names: tuple[str, ...] | None

    def batches(
        self, batch_size: int, architecture: Architecture | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def fingerprint(self) -> str: ...

    @property
    def n_samples(self) -> int | None: ...


def describe_shape(shape: Sequence[int]) -> str:
    """1x28x28 for an image, '60 features' for a vector: both shapes are named in compatibility errors."""
    if len(shape) == 1:
        return f"{shape[0]} features"
    return "x".join(str(d) for d in shape)
