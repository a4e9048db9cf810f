"""Opening the streamed kinds: a CSV file in the data directory, a table through a TableReader."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DatasetError, DatasetMissing
from ..text import quoted
from .definition import DatasetDefinition, TableReader
from .streamed import StreamedDataset
from .tabular import MAX_RECORD_BYTES, Layout

FILE_BLOCK_BYTES = 1 << 20


def _context(kind: str, source: str, names: Iterable[str], class_names: tuple[str, ...] | None) -> bytes:
    """What the fingerprint's key covers besides the rows: the kind, the columns read, the class names."""
    parts = [kind, source, *names, "\x1e", *(class_names or ())]
    return "\x1f".join(parts).encode("utf-8", "surrogateescape")


def open_table(definition: DatasetDefinition, read_table: TableReader | None) -> StreamedDataset:
    what = f"dataset {quoted(definition.name, 60)}"
    if read_table is None:
        raise DatasetError(f"{what}: a table dataset needs a database connection")
    assert definition.source
    assert definition.feature_columns
    if not definition.label_column:
        raise DatasetError(f"{what} has no label column: it is an input of batch scoring, it cannot be evaluated")
    features = tuple(definition.feature_columns)
    columns = (*features, definition.label_column)
    layout = Layout(
        what=f"{what} (table {quoted(definition.source, 120)})",
        feature_names=features,
        label_name=definition.label_column,
        feature_positions=tuple(range(len(features))),
        label_position=len(features),
        class_names=definition.class_names,
    )
    source = definition.source

    def open_blocks():  # type: ignore[no-untyped-def]
        return read_table(source, columns)

    return StreamedDataset(
        definition.name, "table", layout, open_blocks, _context("table", source, columns, definition.class_names)
    )


def resolve_data_file(definition: DatasetDefinition, data_dir: Path | None) -> Path:
    what = f"dataset {quoted(definition.name, 60)}"
    if data_dir is None:
        raise DatasetMissing(f"{what} needs a data directory (--data-dir or CKPT_EVAL_DATA_DIR)")
    assert definition.source
    root = data_dir.resolve()
    path = (root / definition.source).resolve()
    if not path.is_relative_to(root):
        raise DatasetError(f"{what}: {quoted(definition.source)} leads outside the data directory")
    if not path.is_file():
        raise DatasetMissing(f"{what}: {quoted(definition.source)} not found under {root}")
    return path


def _read_header(path: Path, what: str) -> tuple[list[str], int]:
    """The header's field names and its length in bytes (the first record, at most MAX_RECORD_BYTES)."""
    try:
        with path.open("rb") as stream:
            head = stream.read(MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise DatasetError(f"{what}: cannot read ({exc.__class__.__name__})") from None
    end = head.find(b"\n")
    if end < 0:
        if len(head) > MAX_RECORD_BYTES:
            raise DatasetError(f"{what}: the header line is longer than {MAX_RECORD_BYTES} bytes")
        end = len(head)
    try:
        names = next(csv.reader([head[:end].decode("utf-8").rstrip("\r")]))
    except (UnicodeDecodeError, csv.Error, StopIteration) as exc:
        raise DatasetError(f"{what}: unreadable header line ({exc.__class__.__name__})") from None
    return [name.strip() for name in names], min(end + 1, len(head))


def open_csv(definition: DatasetDefinition, data_dir: Path | None) -> StreamedDataset:
    path = resolve_data_file(definition, data_dir)
    what = f"dataset {quoted(definition.name, 60)} (file {quoted(definition.source)})"
    header, header_bytes = _read_header(path, what)
    assert definition.label_column
    label = definition.label_column
    features = definition.feature_columns or tuple(name for name in header if name != label)
    positions: dict[str, int] = {}
    for index, name in enumerate(header):
        positions.setdefault(name, index)
    missing = [name for name in (*features, label) if name not in positions]
    if missing:
        raise DatasetError(
            f"{what}: no column {', '.join(quoted(m, 60) for m in missing)} "
            f"(columns: {', '.join(quoted(h, 40) for h in header[:20])}{', ...' if len(header) > 20 else ''})"
        )
    if not features:
        raise DatasetError(f"{what}: no feature columns besides the label")
    layout = Layout(
        what=what,
        feature_names=tuple(features),
        label_name=label,
        feature_positions=tuple(positions[name] for name in features),
        label_position=positions[label],
        class_names=definition.class_names,
        width=len(header),
    )

    @contextmanager
    def open_blocks() -> Iterator[Iterable[bytes]]:
        try:
            stream = path.open("rb")
        except OSError as exc:
            raise DatasetError(f"{what}: cannot read ({exc.__class__.__name__})") from None
        with stream:
            stream.seek(header_bytes)
            yield iter(lambda: stream.read(FILE_BLOCK_BYTES), b"")

    context = _context("csv", definition.source or "", (*features, label), definition.class_names)
    return StreamedDataset(definition.name, "csv", layout, open_blocks, context)
