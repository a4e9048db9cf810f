"""Prediction rows in PostgreSQL's binary COPY format, built column-wise with numpy (no Python loop per row).

A chunk's piece of predictions becomes one numpy structured array whose records are the rows' binary
COPY tuples (every field has a fixed width), written out with ``tobytes()``. This is what makes the COPY
path dozens of times faster than row INSERTs: formatting rows one by one in Python (``Copy.write_row``)
costs more than the server's work.

The layout is the one of ``ckpt_eval.create_scoring_job``'s output table, in this column order:
row_key bigint, scoring_run_id bigint, checkpoint_id bigint, predicted_index integer, probabilities
double precision[] (NULL for two classes: their positive_probability says it all), positive_probability
double precision (NULL unless there are two classes), scored_at timestamptz. Every field a row does not
need is left out, because the server's work per field is most of what a COPY costs: the class name is
the run's (``scoring_runs.class_names``), the checkpoint's name its registry row; the ``_latest`` view
shows both, and both probabilities of a binary model.
See https://www.postgresql.org/docs/current/sql-copy.html ("Binary Format"); arrays are sent as
array_send writes them (ndim, has-null flag, element type, then each dimension's size and lower bound).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # no flags, no header extension
TRAILER = struct.pack(">h", -1)
FIELDS = 7
FLOAT8_OID = 701
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_NULL = -1


def timestamptz_micros(moment: datetime) -> int:
    """A timestamptz as PostgreSQL sends it in binary: microseconds since 2000-01-01 UTC."""
    return (moment - _POSTGRES_EPOCH) // timedelta(microseconds=1)


def prediction_tuples(
    keys: np.ndarray,
    indices: np.ndarray,
    probabilities: np.ndarray,
    *,
    scoring_run_id: int,
    checkpoint_id: int,
    scored_at: datetime,
) -> bytes:
    """The binary COPY tuples (no signature, no trailer) of one piece of a chunk's predictions, in key order."""
    classes = probabilities.shape[1]
    binary = classes == 2
    layout = [
        ("fields", ">i2"),
        ("key_len", ">i4"), ("key", ">i8"),
        ("run_len", ">i4"), ("run", ">i8"),
        ("checkpoint_len", ">i4"), ("checkpoint", ">i8"),
        ("index_len", ">i4"), ("index", ">i4"),
        ("array_len", ">i4"),
        *([] if binary else [
            ("ndim", ">i4"), ("has_null", ">i4"), ("element_type", ">i4"), ("dim", ">i4"), ("lower_bound", ">i4"),
            ("elements", [("len", ">i4"), ("value", ">f8")], (classes,)),
        ]),
        ("positive_len", ">i4"), *([("positive", ">f8")] if binary else []),
        ("time_len", ">i4"), ("time", ">i8"),
    ]  # fmt: skip
    rows = np.empty(len(keys), dtype=layout)
    rows["fields"] = FIELDS
    rows["key_len"], rows["key"] = 8, keys
    rows["run_len"], rows["run"] = 8, scoring_run_id
    rows["checkpoint_len"], rows["checkpoint"] = 8, checkpoint_id
    rows["index_len"], rows["index"] = 4, indices
    if binary:
        rows["array_len"] = _NULL
        rows["positive_len"], rows["positive"] = 8, probabilities[:, 1]
    else:
        rows["array_len"] = 20 + 12 * classes
        rows["ndim"], rows["has_null"], rows["element_type"] = 1, 0, FLOAT8_OID
        rows["dim"], rows["lower_bound"] = classes, 1
        rows["elements"]["len"] = 8
        rows["elements"]["value"] = probabilities
        rows["positive_len"] = _NULL
    rows["time_len"], rows["time"] = 8, timestamptz_micros(scored_at)
    return rows.tobytes()
