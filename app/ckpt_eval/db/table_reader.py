"""Streams a table dataset's rows (placeholder until the datasets branch lands)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import DatasetError


def open_table_reader(connect: Callable[[], Any], *, timeout_ms: int) -> Callable[..., Any]:
    def read(source: str, columns: object) -> Any:
        raise DatasetError("table datasets are not supported yet")

    return read
