"""IDX files (fashion_mnist, mnist layouts) in the data directory: parsed strictly, bounded in size.

The content sha256 covers the decoded pixels and labels, so the same data gives the same hash
whether the files are gzipped or not (unchanged since v2).
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError, DatasetMissing
from .memory import ArrayDataset, content_sha256

IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
MAX_IDX_BYTES = 256 * 1024 * 1024  # a gzip bomb stops here, far above any MNIST-sized file

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


def load_idx_dataset(layout: IdxLayout, data_dir: Path, split: str = "test", name: str | None = None) -> ArrayDataset:
    prefix = SPLIT_PREFIX[split]
    images_path = find_idx_file(layout, data_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx_file(layout, data_dir, f"{prefix}-labels-idx1-ubyte")
    pixels = parse_idx(read_idx_bytes(images_path), IDX_IMAGES_MAGIC, str(images_path))
    labels = parse_idx(read_idx_bytes(labels_path), IDX_LABELS_MAGIC, str(labels_path))
    return build_idx_dataset(layout, split, pixels, labels, str(images_path), str(labels_path), name)


def build_idx_dataset(
    layout: IdxLayout,
    split: str,
    pixels: np.ndarray,
    labels: np.ndarray,
    images_source: str,
    labels_source: str,
    name: str | None = None,
) -> ArrayDataset:
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
    return ArrayDataset(
        name=name or layout.name,
        kind="idx",
        split=split,
        features=pixels,
        labels=labels.astype(np.int64),
        num_classes=layout.num_classes,
        scale=255.0,
        sample_shape=(1, *layout.image_size),
        sha256=content_sha256(pixels, labels),
    )


def write_idx(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write a uint8 array as an IDX file (gzip when the name ends in .gz): used by tests and tooling."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x00000800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    use_gzip = path.suffix == ".gz" if compress is None else compress
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0) if use_gzip else payload)
