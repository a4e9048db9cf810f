"""Evaluation datasets: IDX files (fashion_mnist, mnist) and scikit-learn's embedded digits.

Every dataset is held as uint8-or-small-int pixels plus int64 labels. The model inputs, scaled
to [0, 1] (``pixel_scale``) as the checkpoints were trained, are converted once per dataset and
shared by every checkpoint evaluated on it; batches are views into them. The content sha256
covers the decoded pixels and labels, so the same data gives the same hash whether the
files are gzipped or not.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import DatasetError, DatasetMissing

if TYPE_CHECKING:
    from .architectures import Architecture

# Streams `COPY (SELECT <columns> FROM <source>) TO STDOUT (FORMAT csv)` blocks (db/table_reader.py).
TableReader = Callable[[str, Sequence[str]], AbstractContextManager[Iterable[bytes]]]

IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
MAX_IDX_BYTES = 256 * 1024 * 1024  # a gzip bomb stops here, far above any MNIST-sized file
DIGITS_TEST_EVERY = 4  # digits test split: samples whose index % 4 == 0 (450 of 1797)

SPLIT_PREFIX = {"test": "t10k", "train": "train"}


@dataclass(frozen=True)
class IdxLayout:
    name: str
    torchvision_folder: str
    image_size: tuple[int, int]
    num_classes: int


IDX_DATASETS = {
    "fashion_mnist": IdxLayout("fashion_mnist", "FashionMNIST", (28, 28), 10),
    "mnist": IdxLayout("mnist", "MNIST", (28, 28), 10),
}
DATASET_NAMES = (*IDX_DATASETS, "digits")


@dataclass(frozen=True)
class Dataset:
    name: str
    split: str
    pixels: np.ndarray  # (N, H, W), integer pixels
    labels: np.ndarray  # (N,), int64 in [0, num_classes)
    num_classes: int
    pixel_scale: float
    sha256: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def kind(self) -> str:
        return "digits" if self.name == "digits" else "idx"

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.input_shape

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return None

    def fingerprint(self) -> str:
        return self.sha256

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, int(self.pixels.shape[1]), int(self.pixels.shape[2]))

    @cached_property
    def inputs(self) -> torch.Tensor:
        """All inputs, N x 1 x H x W float32 in [0, 1]: converted on first use, then kept (4 bytes a pixel)."""
        scaled = self.pixels.astype(np.float32)
        scaled /= np.float32(self.pixel_scale)
        return torch.from_numpy(scaled).unsqueeze(1)

    @cached_property
    def targets(self) -> torch.Tensor:
        """The labels as an int64 tensor sharing the array's memory."""
        return torch.from_numpy(self.labels)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (inputs N x 1 x H x W float32 in [0, 1], labels int64): views, nothing is copied."""
        if batch_size < 1:
            raise ValueError("batch size must be positive")
        inputs, targets = self.inputs, self.targets
        for start in range(0, len(self), batch_size):
            yield inputs[start : start + batch_size], targets[start : start + batch_size]


@dataclass(frozen=True)
class DatasetDefinition:
    """One row of ckpt_eval.datasets."""

    name: str
    kind: str
    source: str | None = None
    split: str = "test"
    feature_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    class_names: tuple[str, ...] | None = None
    fingerprint: str | None = None

    def validate(self) -> None:
        if self.kind not in ("idx", "digits"):
            raise DatasetError(f"dataset {self.name}: kind {self.kind} is not supported yet")


def open_dataset(definition: DatasetDefinition, data_dir: Path | None, read_table: TableReader | None) -> Dataset:
    definition.validate()
    name = "digits" if definition.kind == "digits" else str(definition.source)
    return load_dataset(name, data_dir, definition.split)


def check_compatible(architecture: Architecture, dataset: Dataset) -> None:
    if architecture.input_shape != dataset.input_shape:
        expected = "x".join(map(str, architecture.input_shape))
        actual = "x".join(map(str, dataset.input_shape))
        raise DatasetError(
            f"architecture {architecture.name} takes {expected} inputs, dataset {dataset.name} has {actual}"
        )
    if architecture.num_classes != dataset.num_classes:
        raise DatasetError(
            f"architecture {architecture.name} has {architecture.num_classes} classes, "
            f"dataset {dataset.name} has {dataset.num_classes}"
        )


def content_sha256(pixels: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def load_dataset(name: str, data_dir: Path | None, split: str = "test") -> Dataset:
    """Load a dataset by registry name; cached per process so many checkpoints share one copy."""
    if name not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r} (known: {', '.join(DATASET_NAMES)})")
    if split not in SPLIT_PREFIX:
        raise DatasetError(f"unknown split {split!r}")
    resolved = data_dir.resolve() if data_dir is not None else None
    return _load_cached(name, resolved, split)


@lru_cache(maxsize=4)
def _load_cached(name: str, data_dir: Path | None, split: str) -> Dataset:
    if name == "digits":
        return load_digits(split)
    if data_dir is None:
        raise DatasetMissing(f"dataset {name} needs a data directory (--data-dir or CKPT_EVAL_DATA_DIR)")
    return load_idx_dataset(IDX_DATASETS[name], data_dir, split)


def load_digits(split: str = "test") -> Dataset:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = bunch.images.astype(np.uint8)  # values 0..16
    labels = bunch.target.astype(np.int64)
    is_test = np.arange(len(labels)) % DIGITS_TEST_EVERY == 0
    mask = is_test if split == "test" else ~is_test
    pixels, labels = pixels[mask], labels[mask]
    return Dataset("digits", split, pixels, labels, 10, 16.0, content_sha256(pixels, labels))


def find_idx_file(layout: IdxLayout, data_dir: Path, stem: str) -> Path:
    """Look for ``stem`` or ``stem.gz`` in <data>/<name>/, <data>/<name>/raw/, <data>/<Torchvision>/raw/."""
    folders = (
        data_dir / layout.name,
        data_dir / layout.name / "raw",
        data_dir / layout.torchvision_folder / "raw",
        data_dir / layout.name / layout.torchvision_folder / "raw",
    )
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    raise DatasetMissing(
        f"dataset {layout.name}: {stem}[.gz] not found under {data_dir}/{layout.name}/ "
        f"or {data_dir}/{layout.torchvision_folder}/raw/"
    )


def read_idx_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                data = stream.read(MAX_IDX_BYTES + 1)
        else:
            with path.open("rb") as stream:
                data = stream.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    if len(data) > MAX_IDX_BYTES:
        raise DatasetError(f"{path}: larger than {MAX_IDX_BYTES} bytes once decompressed")
    return data


def parse_idx(data: bytes, expected_magic: int, source: str) -> np.ndarray:
    """Parse an IDX buffer, checking magic, dimension count and exact length."""
    if len(data) < 4:
        raise DatasetError(f"{source}: too short to be an IDX file ({len(data)} bytes)")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise DatasetError(f"{source}: wrong IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{source}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)  # Python ints: a crafted header cannot overflow this
    if len(data) != expected:
        raise DatasetError(
            f"{source}: dimensions {'x'.join(map(str, dims))} need {expected} bytes, file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_dataset(layout: IdxLayout, data_dir: Path, split: str = "test") -> Dataset:
    prefix = SPLIT_PREFIX[split]
    images_path = find_idx_file(layout, data_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx_file(layout, data_dir, f"{prefix}-labels-idx1-ubyte")
    pixels = parse_idx(read_idx_bytes(images_path), IDX_IMAGES_MAGIC, str(images_path))
    labels = parse_idx(read_idx_bytes(labels_path), IDX_LABELS_MAGIC, str(labels_path))
    return build_idx_dataset(layout, split, pixels, labels, str(images_path), str(labels_path))


def build_idx_dataset(
    layout: IdxLayout, split: str, pixels: np.ndarray, labels: np.ndarray, images_source: str, labels_source: str
) -> Dataset:
    if tuple(pixels.shape[1:]) != layout.image_size:
        height, width = layout.image_size
        raise DatasetError(
            f"{images_source}: images are {pixels.shape[1]}x{pixels.shape[2]}, {layout.name} needs {height}x{width}"
        )
    if pixels.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{layout.name}: {pixels.shape[0]} images in {images_source} "
            f"but {labels.shape[0]} labels in {labels_source}"
        )
    if pixels.shape[0] == 0:
        raise DatasetError(f"{layout.name}: {images_source} holds no images")
    if labels.max() >= layout.num_classes:
        raise DatasetError(f"{labels_source}: label {int(labels.max())} is out of range 0..{layout.num_classes - 1}")
    return Dataset(
        layout.name,
        split,
        pixels,
        labels.astype(np.int64),
        layout.num_classes,
        255.0,
        content_sha256(pixels, labels),
    )


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as an IDX file (gzip when the name ends in .gz): used by tests and tooling."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x00000800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    use_gzip = path.suffix == ".gz" if compress is None else compress
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0) if use_gzip else payload)
