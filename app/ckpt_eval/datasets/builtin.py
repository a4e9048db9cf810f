"""scikit-learn's embedded datasets: digits (8x8 images) and breast_cancer (30 measurements, 2 classes).

Both ship inside scikit-learn's wheel (no download). Split rule for both: the test split is the
samples whose index % 4 == 0, the train split the others.
"""

from __future__ import annotations

import numpy as np

from .memory import ArrayDataset, content_sha256, float_content_sha256

DIGITS_TEST_EVERY = 4  # test split: samples whose index % 4 == 0 (450 of 1797 digits, 143 of 569 tumours)
BREAST_CANCER_CLASSES = ("malignant", "benign")  # scikit-learn's target 0, 1


def split_mask(n: int, split: str) -> np.ndarray:
    is_test = np.arange(n) % DIGITS_TEST_EVERY == 0
    return is_test if split == "test" else ~is_test


def load_digits(split: str = "test", name: str = "digits") -> ArrayDataset:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = bunch.images.astype(np.uint8)  # values 0..16
    labels = bunch.target.astype(np.int64)
    mask = split_mask(len(labels), split)
    pixels, labels = pixels[mask], labels[mask]
    return ArrayDataset(
        name=name,
        kind="digits",
        split=split,
        features=pixels,
        labels=labels,
        num_classes=10,
        scale=16.0,
        sample_shape=(1, 8, 8),
        sha256=content_sha256(pixels, labels),
    )


def load_breast_cancer(split: str = "test", name: str = "breast_cancer") -> ArrayDataset:
    from sklearn.datasets import load_breast_cancer as sklearn_breast_cancer

    bunch = sklearn_breast_cancer()
    features = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    assert tuple(bunch.target_names) == BREAST_CANCER_CLASSES
    mask = split_mask(len(labels), split)
    features, labels = np.ascontiguousarray(features[mask]), labels[mask]
    return ArrayDataset(
        name=name,
        kind="breast_cancer",
        split=split,
        features=features,
        labels=labels,
        num_classes=2,
        scale=1.0,
        sample_shape=(features.shape[1],),
        sha256=float_content_sha256(features, labels),
        class_names=BREAST_CANCER_CLASSES,
    )
