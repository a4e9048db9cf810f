"""Datasets: IDX files written with write_idx into real directories, and scikit-learn's digits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_load_digits

import ckpt_eval.datasets
from ckpt_eval.datasets import ArrayDataset as Dataset
from ckpt_eval.datasets import content_sha256, load_dataset, write_idx
from ckpt_eval.errors import DatasetError, DatasetMissing

IMAGES = "t10k-images-idx3-ubyte"
LABELS = "t10k-labels-idx1-ubyte"
N = 40


@pytest.fixture(autouse=True)
def _clear_dataset_cache():
    ckpt_eval.datasets._load_cached.cache_clear()
    yield
    ckpt_eval.datasets._load_cached.cache_clear()


def sample(n: int = N, size: tuple[int, int] = (28, 28), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
    if n >= 2:  # make sure both ends of the pixel range are present
        images[0] = 0
        images[1] = 255
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    return images, labels


def write_pair(
    folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool = False, prefix: str = "t10k"
) -> tuple[Path, Path]:
    ext = ".gz" if gz else ""
    images_path = folder / f"{prefix}-images-idx3-ubyte{ext}"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte{ext}"
    write_idx(images_path, images)
    write_idx(labels_path, labels)
    return images_path, labels_path


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    ("name", "subdir", "gz"),
    [
        ("fashion_mnist", "fashion_mnist", False),
        ("fashion_mnist", "fashion_mnist", True),
        ("fashion_mnist", "fashion_mnist/raw", True),
        ("fashion_mnist", "FashionMNIST/raw", False),
        ("fashion_mnist", "FashionMNIST/raw", True),
        ("fashion_mnist", "fashion_mnist/FashionMNIST/raw", True),
        ("mnist", "mnist", False),
        ("mnist", "mnist", True),
        ("mnist", "MNIST/raw", True),
    ],
)
def test_idx_layouts_load(tmp_path: Path, name: str, subdir: str, gz: bool) -> None:
    images, labels = sample()
    write_pair(tmp_path / subdir, images, labels, gz=gz)
    dataset = load_dataset(name, tmp_path)
    assert isinstance(dataset, Dataset)
    assert dataset.name == name
    assert dataset.split == "test"
    assert len(dataset) == N
    assert dataset.num_classes == 10
    assert dataset.scale == 255.0
    assert dataset.sample_shape == (1, 28, 28)
    np.testing.assert_array_equal(dataset.features, images)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert dataset.labels.dtype == np.int64


def test_gz_and_raw_give_the_same_sha256(tmp_path: Path) -> None:
    images, labels = sample()
    write_pair(tmp_path / "raw" / "fashion_mnist", images, labels, gz=False)
    write_pair(tmp_path / "gz" / "FashionMNIST" / "raw", images, labels, gz=True)
    raw = load_dataset("fashion_mnist", tmp_path / "raw")
    gz = load_dataset("fashion_mnist", tmp_path / "gz")
    assert raw.sha256 == gz.sha256
    assert len(raw.sha256) == 64
    assert raw.sha256 == content_sha256(images, labels)


def test_sha256_changes_with_one_pixel_or_one_label(tmp_path: Path) -> None:
    images, labels = sample()
    write_pair(tmp_path / "a" / "mnist", images, labels)
    pixel = images.copy()
    pixel[5, 3, 3] ^= 1
    write_pair(tmp_path / "b" / "mnist", pixel, labels)
    label = labels.copy()
    label[7] = (label[7] + 1) % 10
    write_pair(tmp_path / "c" / "mnist", images, label)
    hashes = {load_dataset("mnist", tmp_path / d).sha256 for d in "abc"}
    assert len(hashes) == 3


def test_train_split_uses_train_files(tmp_path: Path) -> None:
    test_images, test_labels = sample(n=20, seed=1)
    train_images, train_labels = sample(n=30, seed=2)
    folder = tmp_path / "fashion_mnist"
    write_pair(folder, test_images, test_labels, prefix="t10k")
    write_pair(folder, train_images, train_labels, prefix="train", gz=True)
    assert len(load_dataset("fashion_mnist", tmp_path, split="test")) == 20
    train = load_dataset("fashion_mnist", tmp_path, split="train")
    assert train.split == "train"
    np.testing.assert_array_equal(train.features, train_images)


def test_data_dir_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = sample()
    write_pair(tmp_path / "data" / "mnist", images, labels)
    monkeypatch.chdir(tmp_path)
    assert load_dataset("mnist", Path("data")).sha256 == load_dataset("mnist", tmp_path / "data").sha256


# --------------------------------------------------------------------------- batches


def test_batches_shape_dtype_range_and_last_partial_batch(tmp_path: Path) -> None:
    images, labels = sample()
    write_pair(tmp_path / "fashion_mnist", images, labels, gz=True)
    dataset = load_dataset("fashion_mnist", tmp_path)
    batches = list(dataset.batches(16))
    assert [tuple(x.shape) for x, _ in batches] == [(16, 1, 28, 28), (16, 1, 28, 28), (8, 1, 28, 28)]
    assert [len(y) for _, y in batches] == [16, 16, 8]
    for inputs, targets in batches:
        assert inputs.dtype == torch.float32
        assert targets.dtype == torch.int64
        assert float(inputs.min()) >= 0.0
        assert float(inputs.max()) <= 1.0
    all_inputs = torch.cat([x for x, _ in batches])
    all_labels = torch.cat([y for _, y in batches])
    assert float(all_inputs.min()) == 0.0
    assert float(all_inputs.max()) == 1.0
    np.testing.assert_allclose(all_inputs.squeeze(1).numpy(), images.astype(np.float32) / 255.0, rtol=0, atol=0)
    np.testing.assert_array_equal(all_labels.numpy(), labels)


@pytest.mark.parametrize(("batch_size", "sizes"), [(40, [40]), (100, [40]), (1, [1] * 40), (39, [39, 1])])
def test_batch_sizes(tmp_path: Path, batch_size: int, sizes: list[int]) -> None:
    images, labels = sample()
    write_pair(tmp_path / "mnist", images, labels)
    dataset = load_dataset("mnist", tmp_path)
    assert [len(y) for _, y in dataset.batches(batch_size)] == sizes


def test_batches_do_not_modify_the_dataset(tmp_path: Path) -> None:
    images, labels = sample()
    write_pair(tmp_path / "mnist", images, labels)
    dataset = load_dataset("mnist", tmp_path)
    for inputs, _ in dataset.batches(8):
        inputs.mul_(0)
    np.testing.assert_array_equal(dataset.features, images)


def test_inputs_are_converted_once_and_batches_are_views_of_them(tmp_path: Path) -> None:
    images, labels = sample()
    write_pair(tmp_path / "fashion_mnist", images, labels)
    dataset = load_dataset("fashion_mnist", tmp_path)
    inputs = dataset.inputs
    assert dataset.inputs is inputs  # converted on first use, then kept
    assert tuple(inputs.shape) == (N, 1, 28, 28)
    assert inputs.dtype == torch.float32
    # bit-identical to converting each batch on its own, as evaluation did before
    for start, (batch, targets) in zip(range(0, N, 16), dataset.batches(16), strict=True):
        expected = torch.from_numpy(images[start : start + 16].astype(np.float32) / 255.0).unsqueeze(1)
        assert torch.equal(batch, expected)
        assert batch.untyped_storage().data_ptr() == inputs.untyped_storage().data_ptr()  # a view: no copy
        np.testing.assert_array_equal(targets.numpy(), labels[start : start + 16])
    assert dataset.targets.dtype == torch.int64


def test_digits_inputs_use_their_own_scale() -> None:
    dataset = load_dataset("digits", None)
    assert float(dataset.inputs.max()) == 1.0
    assert torch.equal(dataset.inputs, torch.from_numpy(dataset.features.astype(np.float32) / 16.0).unsqueeze(1))


def test_batch_size_must_be_positive(tmp_path: Path) -> None:
    images, labels = sample()
    write_pair(tmp_path / "mnist", images, labels)
    with pytest.raises(ValueError, match="positive"):
        next(load_dataset("mnist", tmp_path).batches(0))


# --------------------------------------------------------------------------- malformed IDX files


def expect_error(tmp_path: Path, match: str, name: str = "fashion_mnist") -> DatasetError:
    with pytest.raises(DatasetError, match=match) as caught:
        load_dataset(name, tmp_path)
    assert caught.value.exit_code == 65
    return caught.value


def test_wrong_magic_in_images(tmp_path: Path) -> None:
    images, labels = sample()
    folder = tmp_path / "fashion_mnist"
    write_pair(folder, images, labels)
    write_idx(folder / IMAGES, labels)  # a labels file (magic 0x801) where images are expected
    expect_error(tmp_path, "wrong IDX magic 0x00000801, expected 0x00000803")


def test_wrong_magic_in_labels(tmp_path: Path) -> None:
    images, labels = sample()
    folder = tmp_path / "fashion_mnist"
    write_pair(folder, images, labels)
    write_idx(folder / LABELS, labels.reshape(N, 1))  # two dimensions: magic 0x802
    expect_error(tmp_path, "wrong IDX magic 0x00000802")


def test_non_ubyte_data_type_is_rejected(tmp_path: Path) -> None:
    images, labels = sample()
    folder = tmp_path / "fashion_mnist"
    write_pair(folder, images, labels)
    data = bytearray((folder / IMAGES).read_bytes())
    data[2] = 0x0D  # IDX type code for float32
    (folder / IMAGES).write_bytes(bytes(data))
    expect_error(tmp_path, "wrong IDX magic")


def test_wrong_image_dimensions(tmp_path: Path) -> None:
    images, labels = sample(size=(20, 20))
    write_pair(tmp_path / "fashion_mnist", images, labels)
    expect_error(tmp_path, "images are 20x20, fashion_mnist needs 28x28")


def test_non_square_wrong_dimensions(tmp_path: Path) -> None:
    images, labels = sample(size=(28, 27))
    write_pair(tmp_path / "mnist", images, labels, gz=True)
    expect_error(tmp_path, "images are 28x27", name="mnist")


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    images, labels = sample()
    write_pair(tmp_path / "fashion_mnist", images, labels[:-1])
    expect_error(tmp_path, "40 images .* but 39 labels")


@pytest.mark.parametrize("which", [IMAGES, LABELS])
@pytest.mark.parametrize("cut", [1, 30, "header"])
def test_truncated_file(tmp_path: Path, which: str, cut) -> None:
    images, labels = sample()
    folder = tmp_path / "fashion_mnist"
    write_pair(folder, images, labels)
    data = (folder / which).read_bytes()
    data = data[:6] if cut == "header" else data[:-cut]
    (folder / which).write_bytes(data)
    expect_error(tmp_path, "truncated IDX header" if cut == "header" else "need .* bytes, file has")


def test_trailing_bytes_are_rejected(tmp_path: Path) -> None:
    images, labels = sample()
    folder = tmp_path / "fashion_mnist"
    write_pair(folder, images, labels)
    (folder / LABELS).write_bytes((folder / LABELS).read_bytes() + b"\x00")
    expect_error(tmp_path, "file has")


@pytest.mark.parametrize("content", [b"", b"\x00\x00"])
def test_file_too_short(tmp_path: Path, content: bytes) -> None:
    images, labels = sample()
    folder = tmp_path / "fashion_mnist"
    write_pair(folder, images, labels)
    (folder / IMAGES).write_bytes(content)
    expect_error(tmp_path, "too short")


def test_header_claiming_huge_dimensions(tmp_path: Path) -> None:
    images, labels = sample()
    folder = tmp_path / "fashion_mnist"
    write_pair(folder, images, labels)
    header = struct.pack(">IIII", 0x803, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    (folder / IMAGES).write_bytes(header + b"\x00" * 100)
    expect_error(tmp_path, "need .* bytes")


def test_label_out_of_range(tmp_path: Path) -> None:
    images, labels = sample()
    labels = labels.copy()
    labels[17] = 10
    write_pair(tmp_path / "fashion_mnist", images, labels, gz=True)
    expect_error(tmp_path, "label 10 is out of range 0..9")


def test_label_255_out_of_range(tmp_path: Path) -> None:
    images, labels = sample()
    labels = labels.copy()
    labels[0] = 255
    write_pair(tmp_path / "mnist", images, labels)
    expect_error(tmp_path, "label 255", name="mnist")


def test_empty_dataset(tmp_path: Path) -> None:
    images, labels = sample(n=0)
    write_pair(tmp_path / "fashion_mnist", images, labels)
    expect_error(tmp_path, "holds no images")


def gz_cases() -> dict[str, object]:
    def crc(good: bytes) -> bytes:
        data = bytearray(good)
        data[-8] ^= 0x01
        return bytes(data)

    return {
        "not-gzip": lambda good: b"this is not gzip data at all",
        "truncated": lambda good: good[: len(good) // 2],
        "crc": crc,
        "header-only": lambda good: good[:10],
    }


@pytest.mark.parametrize("case", ["not-gzip", "truncated", "crc", "header-only"])
def test_corrupt_gz(tmp_path: Path, case: str) -> None:
    images, labels = sample()
    images_path, _ = write_pair(tmp_path / "fashion_mnist", images, labels, gz=True)
    images_path.write_bytes(gz_cases()[case](images_path.read_bytes()))
    error = expect_error(tmp_path, "cannot read")
    assert images_path.name in str(error)


def test_corrupt_deflate_stream_is_a_dataset_error(tmp_path: Path) -> None:
    images, labels = sample()
    images_path, _ = write_pair(tmp_path / "fashion_mnist", images, labels, gz=True)
    good = images_path.read_bytes()
    images_path.write_bytes(good[:10] + b"\xff" * 50)  # gzip header, then garbage deflate data
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset("fashion_mnist", tmp_path)


def test_gz_content_decompresses_to_idx(tmp_path: Path) -> None:
    images, _ = sample()
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "b", images)
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == (tmp_path / "b").read_bytes()
    write_idx(tmp_path / "c", images, compress=True)
    assert (tmp_path / "c").read_bytes() == (tmp_path / "a.gz").read_bytes()


# --------------------------------------------------------------------------- missing files and bad names


def test_no_files_is_dataset_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing, match="not found") as caught:
        load_dataset("fashion_mnist", tmp_path)
    assert caught.value.exit_code == 66
    assert not isinstance(caught.value, DatasetError)


def test_labels_missing_is_dataset_missing(tmp_path: Path) -> None:
    images, labels = sample()
    _, labels_path = write_pair(tmp_path / "fashion_mnist", images, labels)
    labels_path.unlink()
    with pytest.raises(DatasetMissing, match=LABELS) as caught:
        load_dataset("fashion_mnist", tmp_path)
    assert caught.value.exit_code == 66


def test_files_for_another_dataset_are_not_used(tmp_path: Path) -> None:
    images, labels = sample()
    write_pair(tmp_path / "mnist", images, labels)
    with pytest.raises(DatasetMissing):
        load_dataset("fashion_mnist", tmp_path)


def test_missing_data_dir_is_dataset_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing):
        load_dataset("mnist", tmp_path / "does-not-exist")
    with pytest.raises(DatasetMissing, match="data directory") as caught:
        load_dataset("fashion_mnist", None)
    assert caught.value.exit_code == 66


def test_directory_named_like_the_file_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "fashion_mnist" / IMAGES).mkdir(parents=True)
    (tmp_path / "fashion_mnist" / LABELS).mkdir(parents=True)
    with pytest.raises(DatasetMissing):
        load_dataset("fashion_mnist", tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "", "MNIST", "fashion-mnist", "../mnist"])
def test_unknown_dataset_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetError, match="unknown dataset") as caught:
        load_dataset(name, tmp_path)
    assert caught.value.exit_code == 65


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset("digits", None, split="validation")


# --------------------------------------------------------------------------- digits


def test_digits_test_split() -> None:
    dataset = load_dataset("digits", None)
    assert dataset.name == "digits"
    assert dataset.split == "test"
    assert len(dataset) == 450
    assert dataset.scale == 16.0
    assert dataset.num_classes == 10
    assert dataset.sample_shape == (1, 8, 8)
    assert set(dataset.labels.tolist()) == set(range(10))
    assert dataset.labels.dtype == np.int64
    assert int(dataset.features.max()) == 16
    assert int(dataset.features.min()) == 0


def test_digits_batches_are_scaled_to_unit_range() -> None:
    dataset = load_dataset("digits", None)
    batches = list(dataset.batches(128))
    assert [len(y) for _, y in batches] == [128, 128, 128, 66]
    inputs = torch.cat([x for x, _ in batches])
    assert inputs.dtype == torch.float32
    assert inputs.shape == (450, 1, 8, 8)
    assert float(inputs.min()) == 0.0
    assert float(inputs.max()) == 1.0


def test_digits_splits_are_disjoint_and_cover_all_samples() -> None:
    reference = sklearn_load_digits()
    test = load_dataset("digits", None, split="test")
    train = load_dataset("digits", None, split="train")
    assert len(test) + len(train) == 1797 == len(reference.target)
    test_index = np.arange(1797)[::4]
    train_index = np.setdiff1d(np.arange(1797), test_index)
    assert len(np.intersect1d(test_index, train_index)) == 0
    np.testing.assert_array_equal(test.features, reference.images[test_index].astype(np.uint8))
    np.testing.assert_array_equal(test.labels, reference.target[test_index])
    np.testing.assert_array_equal(train.features, reference.images[train_index].astype(np.uint8))
    np.testing.assert_array_equal(train.labels, reference.target[train_index])
    assert test.sha256 != train.sha256


def test_digits_sha256_is_stable() -> None:
    first = load_dataset("digits", None).sha256
    ckpt_eval.datasets._load_cached.cache_clear()
    second = load_dataset("digits", None).sha256
    assert first == second
    assert first == content_sha256(*_digits_test_reference())


def _digits_test_reference() -> tuple[np.ndarray, np.ndarray]:
    reference = sklearn_load_digits()
    return reference.images[::4].astype(np.uint8), reference.target[::4]


def test_digits_ignores_data_dir(tmp_path: Path) -> None:
    assert load_dataset("digits", tmp_path).sha256 == load_dataset("digits", None).sha256


def test_load_is_cached_per_directory(tmp_path: Path) -> None:
    images, labels = sample()
    write_pair(tmp_path / "mnist", images, labels)
    assert load_dataset("mnist", tmp_path) is load_dataset("mnist", tmp_path)


def test_header_whose_size_overflows_is_a_dataset_error(tmp_path: Path) -> None:
    images, labels = sample()
    folder = tmp_path / "fashion_mnist"
    write_pair(folder, images, labels)
    (folder / IMAGES).write_bytes(struct.pack(">IIII", 0x803, 2**31, 2**31, 4))
    with pytest.raises(DatasetError):
        load_dataset("fashion_mnist", tmp_path)
