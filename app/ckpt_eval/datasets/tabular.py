"""Streamed tabular rows (CSV files, table COPY output): bounded chunks, validation, multiset fingerprint.

Rows arrive as raw CSV blocks that need not end on a row boundary. ``record_chunks`` cuts them into
lists of whole records (a quoted field may hold a newline), at most ``CHUNK_ROWS`` records and about
``CHUNK_BYTES`` bytes each; a record longer than ``MAX_RECORD_BYTES`` is an error, so memory is bounded
whatever the row count and whatever the data. Each chunk is parsed by pandas' C parser, checked
(NULLs, non-numeric and non-finite features, NULL and unknown labels; the error names dataset,
column, read-order row and value) and turned into float32 features and int64 labels.

The fingerprint is an order-independent multiset hash of the records: the sum modulo 2**128 of a
128-bit keyed BLAKE2b of each record (the key derives from the column list), followed by the record
count, rendered as 64 hex digits. It is computed from the very bytes that feed the model, in the
same read: reordering rows keeps it, any added, removed or changed row changes it (a collision
needs a BLAKE2b-128 multiset-sum collision).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import DatasetError
from ..text import quoted

CHUNK_BYTES = 4 << 20  # a chunk is cut once this many bytes are buffered
CHUNK_ROWS = 16_384  # and holds at most this many rows
MAX_RECORD_BYTES = CHUNK_BYTES  # one row longer than this is an error, not a reason to buffer more
_MOD = 1 << 128
_NON_FINITE_TEXT = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


class MultisetHash:
    """Sum mod 2**128 of keyed BLAKE2b-128 digests of records, plus their count: order does not matter."""

    def __init__(self, context: bytes) -> None:
        self._key = hashlib.blake2b(b"ckpt-eval rows v1\x00" + context, digest_size=32).digest()
        self.total = 0
        self.count = 0

    def add(self, records: Sequence[bytes]) -> None:
        key = self._key
        blake2b = hashlib.blake2b
        from_bytes = int.from_bytes
        self.total = (
            self.total + sum(from_bytes(blake2b(r, digest_size=16, key=key).digest(), "little") for r in records)
        ) % _MOD
        self.count += len(records)

    def hexdigest(self) -> str:
        return f"{self.total:032x}{self.count:032x}"


def _split_records(data: bytes) -> tuple[list[bytes], bytes]:
    """Whole records of ``data`` (without their newline) and the unterminated rest."""
    pieces = data.split(b"\n")
    rest = pieces.pop()
    if b'"' not in data:
        return pieces, rest
    records: list[bytes] = []
    current: bytes | None = None
    for piece in pieces:  # a newline inside quotes does not end the record
        current = piece if current is None else current + b"\n" + piece
        if current.count(b'"') % 2 == 0:
            records.append(current)
            current = None
    if current is not None:
        rest = current + b"\n" + rest
    return records, rest


def record_chunks(blocks: Iterable[bytes], what: str, first_row: int = 1) -> Iterator[list[bytes]]:
    """Lists of whole records, each at most CHUNK_ROWS long and about CHUNK_BYTES in size."""
    buffer = bytearray()
    row = first_row
    for block in blocks:
        buffer += block
        if len(buffer) < CHUNK_BYTES:
            continue
        records, rest = _split_records(bytes(buffer))
        if len(rest) > MAX_RECORD_BYTES or (not records and len(buffer) > MAX_RECORD_BYTES):
            raise DatasetError(f"{what}: row {row + len(records)} is longer than {MAX_RECORD_BYTES} bytes")
        buffer = bytearray(rest)
        for start in range(0, len(records), CHUNK_ROWS):
            chunk = records[start : start + CHUNK_ROWS]
            row += len(chunk)
            yield chunk
    if buffer:
        records, rest = _split_records(bytes(buffer) if buffer.endswith(b"\n") else bytes(buffer) + b"\n")
        if rest:
            raise DatasetError(f"{what}: row {row + len(records)} ends inside a quoted field")
        for start in range(0, len(records), CHUNK_ROWS):
            yield records[start : start + CHUNK_ROWS]


@dataclass(frozen=True)
class Layout:
    """Where the features and the label sit in each record, and how labels map to classes."""

    what: str  # "dataset 'x'": the start of every error message
    feature_names: tuple[str, ...]
    label_name: str
    feature_positions: tuple[int, ...]
    label_position: int
    class_names: tuple[str, ...] | None
    width: int | None = None  # fields per record when only some are used (CSV files); None: exactly these

    @property
    def fields(self) -> int:
        return self.width or len(self.feature_positions) + 1


def _field(record: bytes, position: int) -> str | None:
    """One field of one record, decoded as the CSV dialect does (error path only)."""
    try:
        fields = next(csv.reader([record.decode("utf-8", "replace")]))
        return fields[position]
    except (StopIteration, IndexError, csv.Error):
        return None


def parse_chunk(records: list[bytes], layout: Layout, first_row: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 features (n, k) and int64 labels (n,) of one chunk; DatasetError naming the first bad value."""
    data = b"\n".join(records)
    label = layout.label_position
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            header=None,
            dtype={label: str},
            keep_default_na=False,
            na_values=[""],
            na_filter=True,
            skip_blank_lines=False,
            engine="c",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{layout.what}: rows {first_row}..{first_row + len(records) - 1}: {exc}") from None
    if frame.shape != (len(records), layout.fields):
        raise DatasetError(
            f"{layout.what}: rows {first_row}..{first_row + len(records) - 1} do not have {layout.fields} fields each"
        )
    features = _features(frame, records, layout, first_row)
    labels = _labels(frame[label], layout, first_row)
    return features, labels


def _features(frame: pd.DataFrame, records: list[bytes], layout: Layout, first_row: int) -> np.ndarray:
    columns = list(layout.feature_positions)
    block = frame[columns]
    if all(dtype.kind in "fiu" for dtype in block.dtypes):
        values = block.to_numpy(dtype=np.float64)
        if np.isfinite(values).all():
            with np.errstate(over="ignore"):
                result = values.astype(np.float32)
            if np.isfinite(result).all():
                return result
    # Something is wrong: find the first bad value in read order (then column order) and name it.
    worst: tuple[int, int, str] | None = None
    for index, position in enumerate(columns):
        column = frame[position]
        null = column.isna().to_numpy()
        if column.dtype.kind in "fiu":
            numbers = column.to_numpy(dtype=np.float64)
            text_bad = np.zeros(len(column), dtype=bool)
        else:
            numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
            text_bad = ~null & np.isnan(numbers)
        with np.errstate(over="ignore"):
            too_big = np.isfinite(numbers) & ~np.isfinite(numbers.astype(np.float32))
        bad = null | text_bad | ~np.isfinite(numbers) | too_big
        if bad.any():
            row = int(np.argmax(bad))
            if worst is None or row < worst[0]:
                if null[row]:
                    reason = "NULL feature"
                elif too_big[row]:
                    reason = f"value {quoted(_field(records[row], position), 40)} is beyond float32's range"
                else:
                    text = _field(records[row], position)
                    kind = "non-finite" if (text or "").strip().lower() in _NON_FINITE_TEXT else "non-numeric"
                    if not text_bad[row]:
                        kind = "non-finite"
                    reason = f"{kind} value {quoted(text, 40)}"
                worst = (row, index, reason)
    if worst is None:  # unreachable: the fast path found something
        raise DatasetError(f"{layout.what}: rows {first_row}..: invalid features")
    row, index, reason = worst
    raise DatasetError(
        f"{layout.what}: {reason} in column {quoted(layout.feature_names[index], 60)}, row {first_row + row}"
    )


def _labels(column: pd.Series, layout: Layout, first_row: int) -> np.ndarray:
    name = quoted(layout.label_name, 60)
    null = column.isna().to_numpy()
    if null.any():
        row = int(np.argmax(null))
        raise DatasetError(f"{layout.what}: NULL label in column {name}, row {first_row + row}")
    if layout.class_names is not None:
        codes = pd.Index(layout.class_names).get_indexer(column)
        unknown = codes < 0
        if unknown.any():
            row = int(np.argmax(unknown))
            known = ", ".join(quoted(c, 30) for c in layout.class_names)
            raise DatasetError(
                f"{layout.what}: unknown label {quoted(column.iloc[row], 40)} in column {name}, "
                f"row {first_row + row} (class names: {known})"
            )
        return codes.astype(np.int64)
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(numbers) | (numbers < 0) | (numbers != np.floor(numbers)) | (numbers >= 2**31)
    if bad.any():
        row = int(np.argmax(bad))
        raise DatasetError(
            f"{layout.what}: label {quoted(column.iloc[row], 40)} in column {name}, row {first_row + row} "
            "is not a class index (0, 1, ...); give the dataset class names to map text labels"
        )
    return numbers.astype(np.int64)
