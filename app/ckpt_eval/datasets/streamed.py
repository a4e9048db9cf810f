"""A dataset whose rows are streamed (CSV files, tables): one read feeds the model AND the fingerprint."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DatasetError
from ..text import quoted
from .tabular import Layout, MultisetHash, parse_chunk, record_chunks

if TYPE_CHECKING:
    from ..architectures import Architecture

BlockSource = Callable[[], AbstractContextManager[Iterable[bytes]]]


class StreamedDataset:
    """EvaluationData over rows read again on every pass, in bounded chunks; nothing is kept between passes."""

    def __init__(self, name: str, kind: str, layout: Layout, open_blocks: BlockSource, hash_context: bytes) -> None:
        self.name = name
        self.kind = kind
        self.split = "test"
        self.layout = layout
        self.sample_shape: tuple[int, ...] = (len(layout.feature_positions),)
        self.class_names = layout.class_names
        self.num_classes: int | None = None if layout.class_names is None else len(layout.class_names)
        self._open_blocks = open_blocks
        self._hash_context = hash_context
        self._fingerprint: str | None = None
        self._n_samples: int | None = None

    @property
    def n_samples(self) -> int | None:
        """Rows of the last complete pass (None before one)."""
        return self._n_samples

    def _records(self, hasher: MultisetHash) -> Iterator[tuple[int, list[bytes]]]:
        row = 1
        try:
            with self._open_blocks() as blocks:
                for records in record_chunks(blocks, self.layout.what):
                    if self.kind == "csv":  # a blank line in a file is no row
                        records = [r for r in records if r not in (b"", b"\r")]
                        if not records:
                            continue
                    hasher.add(records)
                    yield row, records
                    row += len(records)
        except DatasetError as exc:  # the reader's errors name the table, not the dataset
            if str(exc).startswith(self.layout.what):
                raise
            raise DatasetError(f"dataset {quoted(self.name, 60)}: {exc}") from None

    def fingerprint(self) -> str:
        """The fingerprint of the last complete pass, or of a hashing-only pass when none was made."""
        if self._fingerprint is None:
            hasher = MultisetHash(self._hash_context)
            for _ in self._records(hasher):
                pass
            self._fingerprint = hasher.hexdigest()
            self._n_samples = hasher.count
        return self._fingerprint

    def _check_range(self, labels: np.ndarray, architecture: Architecture | None, first_row: int) -> None:
        if self.layout.class_names is not None or architecture is None or not labels.size:
            return
        limit = architecture.num_classes
        if int(labels.max()) >= limit:
            row = int(np.argmax(labels >= limit))
            raise DatasetError(
                f"{self.layout.what}: label {int(labels[row])} in column {self.layout.label_name!r}, "
                f"row {first_row + row} is out of range 0..{limit - 1} (architecture {architecture.name})"
            )

    def batches(
        self, batch_size: int, architecture: Architecture | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Prepared float32 inputs (n, features) and int64 labels, ``batch_size`` rows at a time."""
        if batch_size < 1:
            raise ValueError("batch size must be positive")
        hasher = MultisetHash(self._hash_context)
        pending: tuple[torch.Tensor, torch.Tensor] | None = None
        for first_row, records in self._records(hasher):
            features, labels = parse_chunk(records, self.layout, first_row)
            self._check_range(labels, architecture, first_row)
            inputs = torch.from_numpy(features)
            if architecture is not None:
                inputs = architecture.prepare(inputs)
            targets = torch.from_numpy(labels)
            start = 0
            if pending is not None:  # complete the batch left over from the previous chunk
                start = batch_size - len(pending[1])
                inputs_head, targets_head = inputs[:start], targets[:start]
                pending = (torch.cat((pending[0], inputs_head)), torch.cat((pending[1], targets_head)))
                if len(pending[1]) < batch_size:
                    continue
                yield pending
                pending = None
            while start + batch_size <= len(targets):
                yield inputs[start : start + batch_size], targets[start : start + batch_size]
                start += batch_size
            if start < len(targets):
                pending = (inputs[start:].clone(), targets[start:].clone())
        if pending is not None:
            yield pending
        self._fingerprint = hasher.hexdigest()
        self._n_samples = hasher.count
        if hasher.count == 0:
            raise DatasetError(f"{self.layout.what}: holds no rows")
