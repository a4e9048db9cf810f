"""Evaluating several checkpoints together: one pass over the data, the same metrics as alone.

In-process, over a FakeRepository, with the real parser, architectures and datasets: a group's
results equal evaluating each checkpoint alone (bit for bit); a bad, hostile or failing checkpoint
in a group fails only its own run; a lost lease stops only its own pair; groups are bounded in size
and in memory; an interrupt hands every unrecorded pair of the group back.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ckpt_eval.evaluate
from ckpt_eval.architectures import build_model, get_architecture
from ckpt_eval.checkpoints import sha256_file
from ckpt_eval.config import Settings, Worker
from ckpt_eval.datasets import ArrayDataset, load_dataset
from ckpt_eval.errors import CheckpointError
from ckpt_eval.evaluate import EvaluationAborted, ModelFailure, evaluate_model, evaluate_models
from ckpt_eval.isolation import CheckpointParser, ParseLimits
from ckpt_eval.job import Heartbeat, Job, Selection
from ckpt_eval.runs import evaluate_group
from tests.support import hostile
from tests.unit.fakes import FakeRepository

MiB = 1024**2


@pytest.fixture(scope="module")
def parser() -> Iterator[CheckpointParser]:
    with CheckpointParser(ParseLimits(wall_seconds=60, cpu_seconds=2, memory_bytes=256 * MiB)) as started:
        yield started


@pytest.fixture(scope="module")
def digits() -> ArrayDataset:
    return load_dataset("digits", None)  # type: ignore[return-value]


def trained_digits_model(seed: int, steps: int) -> nn.Module:
    """Different, imperfect models: a few SGD steps from different seeds."""
    torch.manual_seed(seed)
    model = build_model("digits_mlp")
    train = load_dataset("digits", None, split="train")
    inputs = torch.from_numpy(train.features.astype(np.float32) / 16.0).unsqueeze(1)  # type: ignore[attr-defined]
    targets = torch.from_numpy(train.labels)  # type: ignore[attr-defined]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def models() -> list[nn.Module]:
    return [trained_digits_model(seed, steps) for seed, steps in [(1, 3), (2, 8), (3, 15), (4, 1), (5, 30)]]


# --------------------------------------------------------------------------- one pass, many models


@pytest.mark.parametrize("batch_size", [64, 450, 1000])
def test_a_group_gives_each_model_exactly_its_metrics_alone(digits, models, batch_size: int) -> None:
    arch = get_architecture("digits_mlp")
    alone = [evaluate_model(model, digits, arch, batch_size) for model in models]
    together = evaluate_models(models, digits, arch, batch_size)
    assert together == alone
    assert len({m.accuracy for m in alone}) > 1, "the models differ, so a mix-up would show"


def test_the_fashion_cnn_group_equals_alone_on_images(tmp_path: Path) -> None:
    arch = get_architecture("fashion_cnn")
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(300, 28, 28), dtype=np.uint8)
    labels = (np.arange(300) % 10).astype(np.int64)
    data = ArrayDataset("x", "idx", "test", pixels, labels, 10, 255.0, (1, 28, 28), "0")
    cnns = []
    for seed in range(3):
        torch.manual_seed(seed)
        cnns.append(build_model("fashion_cnn"))
    assert evaluate_models(cnns, data, arch, 128) == [evaluate_model(m, data, arch, 128) for m in cnns]


def test_a_model_failing_in_its_forward_pass_leaves_the_others_untouched(digits, models) -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("boom \x1b[31m")

    arch = get_architecture("digits_mlp")
    wrong_width = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    results = evaluate_models([models[0], Broken(), models[1], wrong_width], digits, arch, 100)
    assert results[0] == evaluate_model(models[0], digits, arch, 100)
    assert results[2] == evaluate_model(models[1], digits, arch, 100)
    assert isinstance(results[1], ModelFailure)
    assert isinstance(results[1].error, CheckpointError)
    assert "forward pass failed: ValueError: boom \\x1b[31m" in str(results[1].error)
    assert isinstance(results[3], ModelFailure)
    assert "expected (N, 10)" in str(results[3].error)


def test_a_model_told_to_stop_leaves_the_pass_and_the_others_finish(digits, models) -> None:
    arch = get_architecture("digits_mlp")
    seen: list[int] = []
    results = evaluate_models(
        models[:3], digits, arch, 100, should_stop=[lambda: False, lambda: len(seen) >= 2, lambda: False],
        on_batch=seen.append,
    )  # fmt: skip
    assert isinstance(results[1], ModelFailure)
    assert isinstance(results[1].error, EvaluationAborted)
    assert results[0] == evaluate_model(models[0], digits, arch, 100)
    assert results[2] == evaluate_model(models[2], digits, arch, 100)
    assert sum(seen) == 450


def test_bad_data_concerns_every_model_and_is_raised(models) -> None:
    class BadData:
        name, kind = "bad", "csv"

        def batches(self, batch_size: int, architecture: object) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            yield torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64)
            raise CheckpointError("row 5: not a number")

    with pytest.raises(CheckpointError, match="row 5"):
        evaluate_models(models[:2], BadData(), get_architecture("digits_mlp"), 4)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the job, in groups


def save(model: nn.Module, path: Path) -> str:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    path.write_bytes(buffer.getvalue())
    return sha256_file(path)


@pytest.fixture
def root(tmp_path: Path, models: list[nn.Module]) -> Path:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for index, model in enumerate(models):
        save(model, folder / f"m{index}.pt")
    return folder


def repository_with(root: Path, names: list[str], **hashes: str) -> FakeRepository:
    repository = FakeRepository()
    repository.add_dataset_row("digits", "digits")
    for name in names:
        path = root / f"{name}.pt"
        sha = hashes.get(name) or (sha256_file(path) if path.exists() else "0" * 64)
        repository.add_checkpoint(name, f"{name}.pt", "digits_mlp", sha, ["digits"])
    return repository


def run_job(repository: FakeRepository, parser: CheckpointParser, root: Path, **settings: object):
    job = Job(
        Settings(checkpoint_root=root, data_dir=None, **settings),  # type: ignore[arg-type]
        repository,  # type: ignore[arg-type]
        lambda: repository,  # type: ignore[arg-type,return-value]
        parser,
        worker=Worker("test", 1, "x"),
    )
    return job.run(Selection())


def metrics_by_name(repository: FakeRepository) -> dict[str, tuple]:
    return {claim.name: tuple(record.metrics) for claim, record in repository.runs}


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many models each pass over the data served."""
    seen: list[int] = []
    real = ckpt_eval.evaluate.evaluate_models

    def counting(models, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(len(models))
        return real(models, *args, **kwargs)

    monkeypatch.setattr(ckpt_eval.evaluate, "evaluate_models", counting)
    return seen


def test_a_group_records_what_one_at_a_time_records(parser, root: Path, passes: list[int]) -> None:
    names = [f"m{i}" for i in range(5)]
    grouped = repository_with(root, names)
    run_job(grouped, parser, root)
    single = repository_with(root, names)
    run_job(single, parser, root, group_size=1)
    assert passes == [5, 1, 1, 1, 1, 1]
    assert metrics_by_name(grouped) == metrics_by_name(single)
    assert {r.status for _, r in grouped.runs} == {"succeeded"}
    assert len({m for m in metrics_by_name(grouped).values()}) == 5


def test_bad_and_hostile_checkpoints_in_a_group_fail_only_their_own_runs(parser, root: Path) -> None:
    (root / "bomb.pt").write_bytes(hostile.hash_bomb_pickle())
    (root / "evil.pt").write_bytes(hostile.torch_archive_with_pickle(hostile.pickle_with_global("os", "system")))
    (root / "wrong.pt").write_bytes((root / "m1.pt").read_bytes())
    names = ["m0", "missing", "bomb", "m1", "evil", "wrong", "m2"]
    repository = repository_with(root, names, wrong="ab" * 32)
    alone = repository_with(root, ["m0", "m1", "m2"])
    run_job(alone, parser, root, group_size=1)

    summary = run_job(repository, parser, root)
    by_name = {o.name: o for o in summary.outcomes}
    assert {name for name, o in by_name.items() if o.status == "succeeded"} == {"m0", "m1", "m2"}
    assert "not found" in (by_name["missing"].error or "")
    assert "CPU-time limit" in (by_name["bomb"].error or "")
    assert "weights_only" in (by_name["evil"].error or "")
    assert "sha256 mismatch" in (by_name["wrong"].error or "")
    assert {k: v for k, v in metrics_by_name(repository).items() if k in ("m0", "m1", "m2")} == metrics_by_name(alone)
    assert {p.status for p in repository.pairs.values()} == {"done", "failed"}


def test_groups_are_bounded_by_size_and_by_the_memory_of_their_models(parser, root: Path, passes: list[int]) -> None:
    names = [f"m{i}" for i in range(5)]
    run_job(repository_with(root, names), parser, root, group_size=2)
    assert passes == [2, 2, 1]
    passes.clear()
    model_bytes = sum(p.numel() * 4 for p in build_model("digits_mlp").parameters())
    run_job(repository_with(root, names), parser, root, group_memory_bytes=2 * model_bytes)
    assert passes == [2, 2, 1], "a full budget evaluates what is loaded before loading more"


def test_a_lease_lost_in_a_group_writes_nothing_for_that_pair_only(parser, root: Path) -> None:
    repository = repository_with(root, ["m0", "m1", "m2"])
    real_finish = repository.finish

    def finish(claim, record):  # type: ignore[no-untyped-def]
        if claim.name == "m1":
            repository.pairs[(claim.name, claim.dataset)].lease_token = "another worker"
        return real_finish(claim, record)

    repository.finish = finish  # type: ignore[method-assign]
    summary = run_job(repository, parser, root)
    assert {o.name: o.status for o in summary.outcomes} == {"m0": "succeeded", "m1": "lost", "m2": "succeeded"}
    assert sorted(claim.name for claim, _ in repository.runs) == ["m0", "m2"]


def test_evaluate_group_stops_only_the_pair_whose_lease_is_lost(parser, root: Path) -> None:
    repository = repository_with(root, ["m0", "m1", "m2"])
    claims = [repository.claim(c.pair, "w", f"t{i}", 60) for i, c in enumerate(repository.candidates(None, 10))]
    settings = Settings(checkpoint_root=root, data_dir=None)
    lost = {"t1"}
    batches = list(evaluate_group(claims, settings, Worker("t", 1, "x"), lambda c: c.lease_token in lost, parser))
    results = {claim.name: record for batch in batches for claim, record in batch}
    assert results["m1"] is None
    assert [results[name].status for name in ("m0", "m2")] == ["succeeded", "succeeded"]  # type: ignore[union-attr]


def test_an_interrupt_hands_every_unrecorded_pair_of_the_group_back(
    parser, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_eval.evaluate, "evaluate_models", interrupted)
    repository = repository_with(root, ["m0", "m1", "missing"])
    with pytest.raises(KeyboardInterrupt):
        run_job(repository, parser, root)
    # 'missing' failed to load and was recorded before the pass; the pass's pairs are pending again.
    assert {name: p.status for (name, _), p in repository.pairs.items()} == {
        "m0": "pending",
        "m1": "pending",
        "missing": "failed",
    }
    assert all(p.lease_token is None for p in repository.pairs.values())


def test_one_heartbeat_extends_every_lease_of_a_group_and_marks_only_the_lost_one(root: Path) -> None:
    repository = repository_with(root, ["m0", "m1", "m2"])
    claims = [repository.claim(c.pair, "w", f"t{i}", 60) for i, c in enumerate(repository.candidates(None, 10))]
    extended: list[str] = []
    real_heartbeat = repository.heartbeat

    def heartbeat(claim, lease_seconds):  # type: ignore[no-untyped-def]
        extended.append(claim.name)
        return real_heartbeat(claim, lease_seconds)

    repository.heartbeat = heartbeat  # type: ignore[method-assign]
    repository.pairs[("m1", "digits")].lease_token = "stolen"
    with Heartbeat(repository, claims, lease_seconds=60, interval=0.05) as beat:  # type: ignore[arg-type]
        assert beat.lost.wait(timeout=5)
        beat.finished(claims[2])
        extended.clear()
        time.sleep(0.3)
    assert [beat.is_lost(c) for c in claims] == [False, True, False]
    assert set(extended) == {"m0"}, "a lost pair and a finished one are no longer extended"


def test_a_group_on_a_streamed_dataset_reads_it_once_and_records_the_version_it_read(
    parser, tmp_path: Path, passes: list[int]
) -> None:
    data_dir, root = tmp_path / "data", tmp_path / "bc"
    data_dir.mkdir()
    root.mkdir()
    csv = Path(__file__).resolve().parents[2] / "demo" / "breast_cancer.csv"
    (data_dir / "bc.csv").write_bytes(csv.read_bytes())
    header = csv.read_text().splitlines()[0].split(",")
    repository = FakeRepository()
    repository.add_dataset_row(
        "bc", "csv", source="bc.csv", feature_columns=header[1:-1], label_column="diagnosis",
        class_names=["malignant", "benign"],
    )  # fmt: skip
    for seed in range(3):
        torch.manual_seed(seed)
        sha = save(build_model("breast_cancer_mlp"), root / f"b{seed}.pt")
        repository.add_checkpoint(f"b{seed}", f"b{seed}.pt", "breast_cancer_mlp", sha, ["bc"])
    job = Job(Settings(checkpoint_root=root, data_dir=data_dir), repository, lambda: repository, parser,  # type: ignore[arg-type]
              worker=Worker("test", 1, "x"))  # fmt: skip
    summary = job.run(Selection())
    assert [o.status for o in summary.outcomes] == ["succeeded"] * 3
    assert passes == [3], "one read of the file for the three models"
    versions = {record.dataset_sha256 for _, record in repository.runs}
    assert len(versions) == 1
    assert versions == {repository.datasets_by_name["bc"]["fingerprint"]}
    assert len({tuple(record.metrics) for _, record in repository.runs}) == 3
