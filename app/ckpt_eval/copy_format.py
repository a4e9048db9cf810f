"""Prediction rows in PostgreSQL's binary COPY format, built column-wise with numpy (no Python loop per row).

A chunk of predictions becomes, per predicted class, one numpy structured array whose records are the
rows' binary COPY tuples (every field of a class's rows has the same width: the class name is that
class's), written out with ``tobytes()``. This is what makes the COPY path dozens of times faster than
row INSERTs: formatting rows one by one in Python (``Copy.write_row``) costs more than the server's work.

The layout is the one of ``ckpt_eval.create_scoring_job``'s output table, in this column order:
row_key bigint, scoring_run_id bigint, checkpoint_id bigint, predicted_index integer, predicted_class
text (NULL without class names), probabilities double precision[] (NULL for two classes: their
positive_probability says it all), positive_probability double precision (NULL unless there are two
classes), scored_at timestamptz. Every field a row does not need is left out of the stream, because
the server's work per field is most of what a COPY costs (the ``_latest`` view shows the checkpoint's
name and both probabilities of a binary model).
See https://www.postgresql.org/docs/current/sql-copy.html ("Binary Format"); arrays are sent as
array_send writes them (ndim, has-null flag, element type, then each dimension's size and lower bound).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # no flags, no header extension
TRAILER = struct.pack(">h", -1)
FIELDS = 8
FLOAT8_OID = 701
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_NULL = -1


def timestamptz_micros(moment: datetime) -> int:
    """A timestamptz as PostgreSQL sends it in binary: microseconds since 2000-01-01 UTC."""
    return (moment - _POSTGRES_EPOCH) // timedelta(microseconds=1)


def _text_field(name: str, value: bytes | None) -> list[tuple]:
    return [(f"{name}_len", ">i4"), *([(name, f"S{len(value)}")] if value else [])]


def prediction_tuples(
    keys: np.ndarray,
    indices: np.ndarray,
    probabilities: np.ndarray,
    *,
    scoring_run_id: int,
    checkpoint_id: int,
    class_names: tuple[str, ...] | None,
    scored_at: datetime,
) -> bytes:
    """The binary COPY tuples (no signature, no trailer) of one piece of a chunk's predictions."""
    classes = probabilities.shape[1]
    micros = timestamptz_micros(scored_at)
    binary = classes == 2
    parts = []
    for index in np.unique(indices).tolist():
        mask = indices == index
        label = class_names[index].encode("utf-8") if class_names and index < len(class_names) else None
        layout = [
            ("fields", ">i2"),
            ("key_len", ">i4"), ("key", ">i8"),
            ("run_len", ">i4"), ("run", ">i8"),
            ("checkpoint_len", ">i4"), ("checkpoint", ">i8"),
            ("index_len", ">i4"), ("index", ">i4"),
            *_text_field("label", label),
            ("array_len", ">i4"),
            *([] if binary else [
                ("ndim", ">i4"), ("has_null", ">i4"), ("element_type", ">i4"), ("dim", ">i4"), ("lower_bound", ">i4"),
                ("elements", [("len", ">i4"), ("value", ">f8")], (classes,)),
            ]),
            ("positive_len", ">i4"), *([("positive", ">f8")] if binary else []),
            ("time_len", ">i4"), ("time", ">i8"),
        ]  # fmt: skip
        rows = np.empty(int(mask.sum()), dtype=layout)
        rows["fields"] = FIELDS
        rows["key_len"], rows["key"] = 8, keys[mask]
        rows["run_len"], rows["run"] = 8, scoring_run_id
        rows["checkpoint_len"], rows["checkpoint"] = 8, checkpoint_id
        rows["index_len"], rows["index"] = 4, index
        rows["label_len"] = _NULL if label is None else len(label)
        if label:
            rows["label"] = label
        if binary:
            rows["array_len"] = _NULL
            rows["positive_len"], rows["positive"] = 8, probabilities[mask, 1]
        else:
            rows["array_len"] = 20 + 12 * classes
            rows["ndim"], rows["has_null"], rows["element_type"] = 1, 0, FLOAT8_OID
            rows["dim"], rows["lower_bound"] = classes, 1
            rows["elements"]["len"] = 8
            rows["elements"]["value"] = probabilities[mask]
            rows["positive_len"] = _NULL
        rows["time_len"], rows["time"] = 8, micros
        parts.append(rows.tobytes())
    return b"".join(parts)
