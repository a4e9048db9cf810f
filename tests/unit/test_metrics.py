"""Metrics against scikit-learn; evaluation and training on real tiny models and the digits dataset."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)
from torch import nn

import ckpt_eval.datasets
from ckpt_eval.architectures import build_model, get_architecture
from ckpt_eval.checkpoints import inspect_checkpoint, load_checkpoint
from ckpt_eval.datasets import ArrayDataset, check_compatible, load_dataset
from ckpt_eval.errors import CheckpointError, DatasetError
from ckpt_eval.evaluate import EvaluationAborted, evaluate_model
from ckpt_eval.isolation import CheckpointParser
from ckpt_eval.metrics import (
    DEFAULT_MIN_ACCURACY,
    DEFAULT_MIN_F1_MACRO,
    BinaryScores,
    Gate,
    MetricAccumulator,
    Metrics,
    apply_gate,
    compute_metrics,
)
from ckpt_eval.train import save_checkpoint, train_model

CLASSES = list(range(10))
DIGITS_MLP = get_architecture("digits_mlp")
TOL = 1e-12


@pytest.fixture(autouse=True)
def _clear_dataset_cache():
    ckpt_eval.datasets._load_cached.cache_clear()
    yield
    ckpt_eval.datasets._load_cached.cache_clear()


def random_case(seed: int, n: int = 500, absent: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Labels covering all classes; predictions that are mostly right and never use ``absent`` classes."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(10), rng.integers(0, 10, n - 10)])
    rng.shuffle(labels)
    predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 10, n))
    allowed = np.array([c for c in CLASSES if c not in absent])
    predictions = np.where(np.isin(predictions, absent), rng.choice(allowed, n), predictions)
    return labels.astype(np.int64), predictions.astype(np.int64)


# --------------------------------------------------------------------------- compute_metrics vs scikit-learn

CASES = [
    pytest.param(0, (), id="seed0"),
    pytest.param(1, (3,), id="seed1-no-3"),
    pytest.param(2, (0, 9), id="seed2-no-0-9"),
    pytest.param(3, (1, 2, 4, 5, 6, 7, 8), id="seed3-only-0-3-9"),
    pytest.param(4, (), id="seed4"),
]


@pytest.mark.parametrize(("seed", "absent"), CASES)
def test_compute_metrics_matches_sklearn(seed: int, absent: tuple[int, ...]) -> None:
    labels, predictions = random_case(seed, absent=absent)
    assert not set(absent) & set(predictions.tolist())
    metrics = compute_metrics(labels, predictions, loss_sum=123.0, num_classes=10)

    assert metrics.n_samples == len(labels)
    assert metrics.accuracy == pytest.approx(accuracy_score(labels, predictions), abs=TOL)
    assert metrics.f1_macro == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0), abs=TOL)
    assert metrics.f1_weighted == pytest.approx(
        f1_score(labels, predictions, average="weighted", zero_division=0), abs=TOL
    )
    p_macro, r_macro, _, _ = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0)
    assert metrics.precision_macro == pytest.approx(p_macro, abs=TOL)
    assert metrics.recall_macro == pytest.approx(r_macro, abs=TOL)

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=CLASSES, zero_division=0
    )
    assert [c.label for c in metrics.per_class] == CLASSES
    for c in metrics.per_class:
        assert c.precision == pytest.approx(precision[c.label], abs=TOL)
        assert c.recall == pytest.approx(recall[c.label], abs=TOL)
        assert c.f1 == pytest.approx(f1[c.label], abs=TOL)
        assert c.support == support[c.label]
        assert isinstance(c.support, int)
    for c in absent:
        assert metrics.per_class[c].precision == 0.0
        assert metrics.per_class[c].recall == 0.0
    assert metrics.confusion == tuple(tuple(row) for row in confusion_matrix(labels, predictions, labels=CLASSES))
    assert sum(map(sum, metrics.confusion)) == len(labels)


def sklearn_reference(labels: np.ndarray, predictions: np.ndarray) -> tuple:
    """Every figure as scikit-learn computes it (the implementation ckpt-eval had before)."""
    per_class = precision_recall_fscore_support(labels, predictions, labels=CLASSES, zero_division=0.0)
    macro = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0.0)
    weighted = precision_recall_fscore_support(labels, predictions, average="weighted", zero_division=0.0)
    matrix = confusion_matrix(labels, predictions, labels=CLASSES)
    return (
        float(np.trace(matrix)) / len(labels),
        float(macro[2]),
        float(weighted[2]),
        float(macro[0]),
        float(macro[1]),
        tuple((float(p), float(r), float(f), int(s)) for p, r, f, s in zip(*per_class, strict=True)),
        tuple(tuple(int(v) for v in row) for row in matrix),
    )


def test_metrics_equal_sklearn_exactly_on_many_random_cases() -> None:
    # Not approximately: the stored figures must not change by a bit with the confusion-matrix implementation.
    rng = np.random.default_rng(2024)
    for _ in range(300):
        n = int(rng.integers(1, 600))
        true_classes = rng.choice(10, int(rng.integers(1, 11)), replace=False)
        predicted_classes = rng.choice(10, int(rng.integers(1, 11)), replace=False)
        labels = rng.choice(true_classes, n)
        predictions = np.where(rng.random(n) < rng.random(), labels, rng.choice(predicted_classes, n))
        metrics = compute_metrics(labels, predictions, 0.0, 10)
        got = (
            metrics.accuracy,
            metrics.f1_macro,
            metrics.f1_weighted,
            metrics.precision_macro,
            metrics.recall_macro,
            tuple((c.precision, c.recall, c.f1, c.support) for c in metrics.per_class),
            metrics.confusion,
        )
        assert got == sklearn_reference(labels, predictions)


@pytest.mark.parametrize(
    ("labels", "predictions", "message"),
    [
        ([0, 10], [0, 1], "label 10 is outside 0..9"),
        ([0, 1], [0, -1], "prediction -1 is outside 0..9"),
        ([0, 1, 2], [0, 1], "3 labels but 2 predictions"),
    ],
)
def test_values_outside_the_classes_are_rejected(labels: list[int], predictions: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(np.array(labels), np.array(predictions), 0.0, 10)
    with pytest.raises(ValueError, match=message):
        MetricAccumulator(10).update(np.array(labels), np.array(predictions), 0.0)


def test_evaluation_modules_do_not_import_scikit_learn() -> None:
    # scikit-learn and scipy cost 0.7-1.4 s of start-up; the run path does without them.
    code = (
        "import sys, ckpt_eval.metrics, ckpt_eval.evaluate, ckpt_eval.datasets; "
        "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_metric_values_are_plain_python_numbers() -> None:
    labels, predictions = random_case(9)
    metrics = compute_metrics(labels, predictions, 1.0, 10)
    for name in ("loss", "accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro"):
        assert type(getattr(metrics, name)) is float, name
    assert all(type(v) is int for row in metrics.confusion for v in row)


def test_perfect_predictions() -> None:
    labels = np.repeat(np.arange(10), 5)
    metrics = compute_metrics(labels, labels.copy(), 0.0, 10)
    assert metrics.accuracy == metrics.f1_macro == metrics.f1_weighted == 1.0
    assert metrics.loss == 0.0
    assert metrics.confusion == tuple(tuple(5 if i == j else 0 for j in range(10)) for i in range(10))


def test_class_never_predicted_and_never_true_stays_out_of_the_macro_mean() -> None:
    # As scikit-learn's default: averages run over the classes seen in the labels or the predictions,
    # so a test set without some class is not penalised for it; per-class rows still cover every class.
    labels = np.array([0, 1, 0, 1])
    metrics = compute_metrics(labels, labels.copy(), 0.0, 10)
    assert metrics.accuracy == 1.0
    assert metrics.f1_macro == pytest.approx(f1_score(labels, labels, average="macro"), abs=TOL) == 1.0
    assert metrics.per_class[5].support == 0
    predicted_only = compute_metrics(labels, np.array([0, 1, 0, 7]), 0.0, 10)
    assert predicted_only.f1_macro == pytest.approx(
        f1_score(labels, np.array([0, 1, 0, 7]), average="macro", zero_division=0), abs=TOL
    )


def test_loss_is_mean_of_the_sum() -> None:
    labels, predictions = random_case(5, n=250)
    assert compute_metrics(labels, predictions, 575.0, 10).loss == pytest.approx(2.3, abs=TOL)


# --------------------------------------------------------------------------- accumulator


@pytest.mark.parametrize("splits", [[500], [1, 499], [100, 100, 100, 100, 100], [7, 250, 3, 240]])
def test_accumulator_equals_one_shot(splits: list[int]) -> None:
    labels, predictions = random_case(11, absent=(4,))
    losses = np.random.default_rng(0).random(len(labels)) * 3
    accumulator = MetricAccumulator(10)
    start = 0
    for size in splits:
        stop = start + size
        accumulator.update(labels[start:stop], predictions[start:stop], float(losses[start:stop].sum()))
        start = stop
    result = accumulator.result()
    expected = compute_metrics(labels, predictions, float(losses.sum()), 10)
    assert result.confusion == expected.confusion
    assert result.per_class == expected.per_class
    assert result.n_samples == expected.n_samples == 500
    for name in ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro"):
        assert getattr(result, name) == getattr(expected, name)
    assert result.loss == pytest.approx(float(losses.sum()) / 500, abs=TOL)


def test_accumulator_accepts_torch_and_lists() -> None:
    accumulator = MetricAccumulator(10)
    accumulator.update(torch.tensor([0, 1]).numpy(), [0, 2], 1.5)
    accumulator.update([3], np.array([3]), 0.5)
    result = accumulator.result()
    assert result.n_samples == 3
    assert result.accuracy == pytest.approx(2 / 3, abs=TOL)
    assert result.loss == pytest.approx(2.0 / 3, abs=TOL)


def test_empty_accumulator_raises() -> None:
    with pytest.raises(ValueError, match="no samples"):
        MetricAccumulator(10).result()


# --------------------------------------------------------------------------- rows


def test_rows_layout() -> None:
    labels, predictions = random_case(6)
    metrics = compute_metrics(labels, predictions, 50.0, 10)
    rows = metrics.rows()
    overall = [(m, v) for m, c, v in rows if c == ""]
    assert overall == [
        ("loss", metrics.loss),
        ("accuracy", metrics.accuracy),
        ("f1_macro", metrics.f1_macro),
        ("f1_weighted", metrics.f1_weighted),
        ("precision_macro", metrics.precision_macro),
        ("recall_macro", metrics.recall_macro),
    ]
    per_class = [(m, c, v) for m, c, v in rows if c != ""]
    assert sorted({c for _, c, _ in per_class}, key=int) == [str(i) for i in range(10)]
    assert len(per_class) == 40
    for cls in metrics.per_class:
        got = {m: v for m, c, v in per_class if c == str(cls.label)}
        assert got == {"precision": cls.precision, "recall": cls.recall, "f1": cls.f1, "support": float(cls.support)}
    assert all(isinstance(v, float) for _, _, v in rows)
    assert len({(m, c) for m, c, _ in rows}) == len(rows)


# --------------------------------------------------------------------------- gate


def metrics_with(**changes: float) -> Metrics:
    labels, predictions = random_case(7)
    return dataclasses.replace(compute_metrics(labels, predictions, 100.0, 10), **changes)


def test_gate_passes_at_the_thresholds() -> None:
    verdict = apply_gate(metrics_with(accuracy=0.7, f1_macro=0.7), Gate(0.7, 0.7))
    assert verdict.passed
    assert verdict.label == "pass"
    assert verdict.reasons == ()


def test_gate_passes_above_the_thresholds() -> None:
    assert apply_gate(metrics_with(accuracy=0.95, f1_macro=0.9), Gate()).passed


@pytest.mark.parametrize(
    ("accuracy", "f1_macro", "names"),
    [
        (0.6999, 0.9, ["accuracy"]),
        (0.9, 0.5, ["f1_macro"]),
        (0.1, 0.2, ["accuracy", "f1_macro"]),
    ],
)
def test_gate_fails_below_with_reasons(accuracy: float, f1_macro: float, names: list[str]) -> None:
    verdict = apply_gate(metrics_with(accuracy=accuracy, f1_macro=f1_macro), Gate(0.7, 0.7))
    assert not verdict.passed
    assert verdict.label == "fail"
    assert [r.split()[0] for r in verdict.reasons] == names
    assert all("< 0.7" in r for r in verdict.reasons)


def test_gate_reason_shows_value_and_threshold() -> None:
    verdict = apply_gate(metrics_with(accuracy=0.5, f1_macro=0.9), Gate(0.75, 0.1))
    assert verdict.reasons == ("accuracy 0.5000 < 0.75",)


@pytest.mark.parametrize(
    ("changes", "metric"),
    [
        ({"accuracy": math.nan}, "accuracy"),
        ({"f1_macro": math.nan}, "f1_macro"),
        ({"loss": math.nan}, "loss"),
        ({"loss": math.inf}, "loss"),
        ({"accuracy": math.inf}, "accuracy"),
    ],
)
@pytest.mark.parametrize("threshold", [0.0, -1.0, 0.7])
def test_non_finite_metrics_never_pass(changes: dict[str, float], metric: str, threshold: float) -> None:
    verdict = apply_gate(metrics_with(**{"accuracy": 0.99, "f1_macro": 0.99, **changes}), Gate(threshold, threshold))
    assert not verdict.passed
    assert any(r.startswith(metric) for r in verdict.reasons)


def test_gate_from_registry_defaults() -> None:
    assert Gate.from_registry(None, None) == Gate(0.7, 0.7)
    assert DEFAULT_MIN_ACCURACY == DEFAULT_MIN_F1_MACRO == 0.7
    assert Gate.from_registry(0.9, None) == Gate(0.9, 0.7)
    assert Gate.from_registry(None, 0.0) == Gate(0.7, 0.0)
    gate = Gate.from_registry(Decimal("0.85"), Decimal("0.8"))  # numeric columns arrive as Decimal
    assert gate == Gate(0.85, 0.8)
    assert type(gate.min_accuracy) is float


def test_zero_thresholds_are_not_replaced_by_defaults() -> None:
    gate = Gate.from_registry(0, 0)
    assert apply_gate(metrics_with(accuracy=0.01, f1_macro=0.0), gate).passed


# --------------------------------------------------------------------------- evaluate_model on digits


@pytest.fixture(scope="module")
def digits():
    ckpt_eval.datasets._load_cached.cache_clear()
    return load_dataset("digits", None)


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("digits_mlp")
    # A few quick steps so the predictions are neither constant nor perfect.
    train = ckpt_eval.datasets.load_digits("train")
    inputs = torch.from_numpy(train.features.astype(np.float32) / 16.0).unsqueeze(1)
    targets = torch.from_numpy(train.labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(15):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return model.eval()


def independent_metrics(model: nn.Module, dataset) -> dict[str, float]:
    """One forward pass over all 450 inputs; loss averaged in float64."""
    inputs = torch.from_numpy(dataset.features.astype(np.float32) / 16.0).unsqueeze(1)
    with torch.no_grad():
        logits = model(inputs).double()
    labels = dataset.labels
    predictions = logits.argmax(dim=1).numpy()
    return {
        "loss": float(F.cross_entropy(logits, torch.from_numpy(labels))),
        "accuracy": accuracy_score(labels, predictions),
        "f1_macro": f1_score(labels, predictions, labels=CLASSES, average="macro", zero_division=0),
        "f1_weighted": f1_score(labels, predictions, labels=CLASSES, average="weighted", zero_division=0),
        "predictions": predictions,
    }


@pytest.mark.parametrize("batch_size", [256, 7, 450, 1000])
def test_evaluate_model_matches_independent_computation(digits, tiny_model, batch_size: int) -> None:
    seen: list[int] = []
    metrics = evaluate_model(tiny_model, digits, DIGITS_MLP, batch_size=batch_size, on_batch=seen.append)
    expected = independent_metrics(tiny_model, digits)
    assert metrics.n_samples == 450
    assert sum(seen) == 450
    assert len(seen) == math.ceil(450 / batch_size)
    assert 0.2 < metrics.accuracy < 1.0  # a real, imperfect model
    for name in ("loss", "accuracy", "f1_macro", "f1_weighted"):
        assert getattr(metrics, name) == pytest.approx(expected[name], abs=1e-6), name
    assert metrics.confusion == tuple(
        tuple(row) for row in confusion_matrix(digits.labels, expected["predictions"], labels=CLASSES)
    )


def test_evaluate_model_leaves_weights_alone_and_sets_eval_mode(digits, tiny_model) -> None:
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    tiny_model.train()
    evaluate_model(tiny_model, digits, DIGITS_MLP)
    assert not tiny_model.training
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(value, before[key])


def test_should_stop_aborts_before_first_batch(digits, tiny_model) -> None:
    seen: list[int] = []
    with pytest.raises(EvaluationAborted):
        evaluate_model(tiny_model, digits, DIGITS_MLP, should_stop=lambda: True, on_batch=seen.append)
    assert seen == []


def test_should_stop_aborts_between_batches(digits, tiny_model) -> None:
    seen: list[int] = []
    with pytest.raises(EvaluationAborted):
        evaluate_model(
            tiny_model, digits, DIGITS_MLP, batch_size=100, should_stop=lambda: len(seen) >= 2, on_batch=seen.append
        )
    assert seen == [100, 100]


@pytest.mark.parametrize("arch", ["digits_mlp", "fashion_cnn"])  # the image architectures
def test_registered_architectures_leave_the_shared_inputs_alone(tmp_path: Path, arch: str) -> None:
    # Batches are views of one tensor shared by every checkpoint of a run: a model that wrote into
    # its input would change what the next checkpoint is evaluated on.
    architecture = get_architecture(arch)
    shape = architecture.input_shape
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(50, *shape[1:]), dtype=np.uint8)
    labels = (np.arange(50) % architecture.num_classes).astype(np.int64)
    dataset = ArrayDataset("x", "idx", "test", pixels, labels, architecture.num_classes, 255.0, shape, "0")
    before = dataset.prepared(architecture).clone()
    torch.manual_seed(0)
    first = evaluate_model(build_model(arch), dataset, architecture, batch_size=16)
    assert torch.equal(dataset.prepared(architecture), before)
    torch.manual_seed(0)
    assert evaluate_model(build_model(arch), dataset, architecture, batch_size=16) == first


def test_model_with_wrong_output_width_is_a_checkpoint_error(digits) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(CheckpointError, match=r"expected \(N, 10\)"):
        evaluate_model(model, digits, DIGITS_MLP)


def test_check_compatible_rejects_fashion_cnn_with_digits(digits) -> None:
    with pytest.raises(DatasetError, match="fashion_cnn expects 1x28x28 inputs, dataset 'digits' has 1x8x8") as caught:
        check_compatible(get_architecture("fashion_cnn"), digits)
    assert caught.value.exit_code == 65
    assert isinstance(caught.value, CheckpointError)  # `ckpt-eval train` reports it as a usage error
    check_compatible(DIGITS_MLP, digits)
    with pytest.raises(CheckpointError, match="unknown architecture"):
        get_architecture("nope")


def test_check_compatible_rejects_class_count_mismatch(digits) -> None:
    fewer = dataclasses.replace(digits, num_classes=5)
    with pytest.raises(DatasetError, match="10 classes, dataset 'digits' has 5"):
        check_compatible(DIGITS_MLP, fewer)


# --------------------------------------------------------------------------- training and saving


@pytest.fixture(scope="module")
def digits_train():
    ckpt_eval.datasets._load_cached.cache_clear()
    return load_dataset("digits", None, split="train")


@pytest.fixture(scope="module")
def trained(digits_train) -> nn.Module:
    return train_model("digits_mlp", digits_train, epochs=1, seed=42)


def test_training_is_reproducible(digits_train, trained) -> None:
    again = train_model("digits_mlp", digits_train, epochs=1, seed=42)
    first, second = trained.state_dict(), again.state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_different_seed_gives_different_weights(digits_train, trained) -> None:
    other = train_model("digits_mlp", digits_train, epochs=1, seed=43)
    assert not torch.equal(trained.state_dict()["layers.1.weight"], other.state_dict()["layers.1.weight"])


def test_training_restores_thread_count(digits_train) -> None:
    before = torch.get_num_threads()
    train_model("digits_mlp", digits_train, epochs=1, seed=1)
    assert torch.get_num_threads() == before


def test_trained_model_beats_chance_on_test_split(digits, trained) -> None:
    assert not trained.training
    assert evaluate_model(trained, digits, DIGITS_MLP).accuracy > 0.5


def test_train_rejects_incompatible_architecture(digits_train) -> None:
    with pytest.raises(CheckpointError, match="expects 1x28x28"):
        train_model("fashion_cnn", digits_train, epochs=1, seed=0)


@pytest.fixture(scope="module")
def parser():
    with CheckpointParser() as started:
        yield started


def test_save_checkpoint_bytes_do_not_depend_on_file_name(tmp_path: Path, trained, parser) -> None:
    save_checkpoint(trained, tmp_path / "a.pt")
    save_checkpoint(trained, tmp_path / "nested" / "dirs" / "completely-different-name.pt")
    first = (tmp_path / "a.pt").read_bytes()
    second = (tmp_path / "nested" / "dirs" / "completely-different-name.pt").read_bytes()
    assert first == second
    loaded = load_checkpoint(tmp_path, "a.pt", "digits_mlp", hashlib.sha256(first).hexdigest(), parser)
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_save_checkpoint_safetensors_loads(tmp_path: Path, digits, trained, parser) -> None:
    save_checkpoint(trained, tmp_path / "out" / "m.safetensors")
    raw = load_file(str(tmp_path / "out" / "m.safetensors"))
    assert raw.keys() == trained.state_dict().keys()
    loaded = inspect_checkpoint(tmp_path, "out/m.safetensors", "digits_mlp", parser)
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert evaluate_model(loaded.model, digits, DIGITS_MLP) == evaluate_model(trained, digits, DIGITS_MLP)


# --------------------------------------------------------------------------- binary tasks: ROC AUC and log loss


def sklearn_binary(labels: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    probabilities = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    return roc_auc_score(labels, probabilities[:, 1]), log_loss(labels, probabilities, labels=[0, 1])


def accumulate(labels: np.ndarray, logits: np.ndarray, batch: int = 64) -> Metrics:
    accumulator = MetricAccumulator(2)
    for start in range(0, len(labels), batch):
        part, scores = labels[start : start + batch], logits[start : start + batch]
        accumulator.update(part, scores.argmax(axis=1), 0.0, scores)
    return accumulator.result()


def noisy_case(seed: int, n: int = 2000, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = rng.normal(size=(n, 2)).astype(np.float32)
    logits[:, 1] += labels * 1.2
    if decimals is not None:  # coarse scores: many exact ties
        logits = np.round(logits, decimals)
    return labels, logits


@pytest.mark.parametrize("seed", range(5))
def test_binary_auc_and_log_loss_match_sklearn(seed: int) -> None:
    labels, logits = noisy_case(seed)
    metrics = accumulate(labels, logits)
    auc, loss = sklearn_binary(labels, logits)
    scores = BinaryScores()
    scores.update(labels, logits)
    bound = scores.auc_error_bound()
    assert bound < 1e-3
    assert abs(metrics.roc_auc - auc) <= bound + 1e-12
    assert metrics.roc_auc == pytest.approx(auc, abs=1e-4)
    assert metrics.log_loss == pytest.approx(loss, rel=1e-9)
    overall = [(m, v) for m, c, v in metrics.rows() if c == ""]
    assert overall[-2:] == [("roc_auc", metrics.roc_auc), ("log_loss", metrics.log_loss)]


@pytest.mark.parametrize("decimals", [0, 1])
def test_binary_ties_are_exact(decimals: int) -> None:
    labels, logits = noisy_case(7, decimals=decimals)
    logits[:, 0] = 0.0  # the log-odds are then the rounded values themselves: few distinct, exact ties
    auc, loss = sklearn_binary(labels, logits)
    metrics = accumulate(labels, logits)
    assert metrics.roc_auc == pytest.approx(auc, abs=1e-12)
    assert metrics.log_loss == pytest.approx(loss, rel=1e-9)


def test_one_class_batches_give_the_same_figures() -> None:
    labels, logits = noisy_case(3, n=1000)
    order = np.argsort(labels, kind="stable")  # every batch holds one class only
    sorted_metrics = accumulate(labels[order], logits[order], batch=50)
    auc, loss = sklearn_binary(labels, logits)
    assert sorted_metrics.roc_auc == pytest.approx(auc, abs=1e-4)
    assert sorted_metrics.roc_auc == accumulate(labels, logits, batch=1000).roc_auc
    assert sorted_metrics.log_loss == pytest.approx(loss, rel=1e-9)


@pytest.mark.parametrize(("scale", "expected_auc"), [(5.0, 1.0), (-5.0, 0.0), (60.0, 1.0), (-60.0, 0.0)])
def test_perfect_and_inverted_models(scale: float, expected_auc: float) -> None:
    labels = np.array([0, 1] * 100)
    logits = np.zeros((200, 2), dtype=np.float32)
    logits[:, 1] = (labels * 2 - 1) * scale + np.linspace(0, 1, 200)
    auc, loss = sklearn_binary(labels, logits)
    metrics = accumulate(labels, logits)
    assert metrics.roc_auc == auc == expected_auc
    assert metrics.log_loss == pytest.approx(loss, rel=1e-9)  # clipped at float64's eps as scikit-learn does


def test_one_class_only_has_no_auc_row() -> None:
    labels = np.zeros(30, dtype=np.int64)
    logits = np.random.default_rng(0).normal(size=(30, 2))
    metrics = accumulate(labels, logits)
    assert metrics.roc_auc is None
    assert metrics.log_loss == pytest.approx(
        log_loss(labels, torch.softmax(torch.from_numpy(logits), 1), labels=[0, 1])
    )
    assert "roc_auc" not in {m for m, _, _ in metrics.rows()}


def test_non_finite_logits_make_nan_figures() -> None:
    labels, logits = noisy_case(1, n=100)
    logits[5, 1] = np.nan
    metrics = accumulate(labels, logits)
    assert math.isnan(metrics.roc_auc)
    assert math.isnan(metrics.log_loss)


def test_multi_class_rows_stay_as_they_were(digits, tiny_model) -> None:
    rows = evaluate_model(tiny_model, digits, DIGITS_MLP).rows()
    assert {m for m, c, _ in rows if c == ""} == {
        "loss",
        "accuracy",
        "f1_macro",
        "f1_weighted",
        "precision_macro",
        "recall_macro",
    }


def test_binary_memory_does_not_grow_with_samples() -> None:
    scores = BinaryScores()
    before = scores._counts.nbytes
    labels, logits = noisy_case(2, n=20_000)
    for start in range(0, 20_000, 1000):
        scores.update(labels[start : start + 1000], logits[start : start + 1000])
    assert scores._counts.nbytes == before == 2 * BinaryScores.BINS * 8
