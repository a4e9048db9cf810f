"""The job in-process, over a FakeRepository: pairs, failures confined to their own run, dataset
versions, the lease fence. The parser, architectures and datasets are the real ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ckpt_eval import __version__
from ckpt_eval.architectures import build_model
from ckpt_eval.checkpoints import sha256_file
from ckpt_eval.config import Settings, Worker
from ckpt_eval.datasets import write_idx
from ckpt_eval.isolation import CheckpointParser, ParseLimits
from ckpt_eval.job import Job, Selection
from tests.unit.fakes import FakeRepository

REPO = Path(__file__).resolve().parents[2]
CHECKPOINTS = REPO / "checkpoints"
GOOD = "digits-mlp-good.pt"


@pytest.fixture(scope="module")
def parser() -> Iterator[CheckpointParser]:
    with CheckpointParser(ParseLimits(wall_seconds=60, cpu_seconds=30, memory_bytes=512 * 1024**2)) as started:
        yield started


@pytest.fixture
def repository() -> FakeRepository:
    fake = FakeRepository()
    fake.add_dataset_row("digits", "digits")
    fake.add_dataset_row("digits_train", "digits", split="train")
    return fake


def run_job(
    repository: FakeRepository,
    parser: CheckpointParser,
    selection: Selection | None = None,
    settings: Settings | None = None,
):
    settings = settings or Settings(checkpoint_root=CHECKPOINTS, data_dir=None)
    job = Job(settings, repository, lambda: repository, parser, worker=Worker("test", 1, "x"))  # type: ignore[arg-type]
    return job.run(selection or Selection())


def test_each_pair_of_a_checkpoint_is_evaluated_and_recorded(repository: FakeRepository, parser) -> None:
    repository.add_checkpoint("good", GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits", "digits_train"])
    summary = run_job(repository, parser)
    assert [(o.name, o.dataset, o.status, o.verdict) for o in summary.outcomes] == [
        ("good", "digits", "succeeded", "pass"),
        ("good", "digits_train", "succeeded", "pass"),
    ]
    records = {claim.dataset: record for claim, record in repository.runs}
    assert records["digits"].n_samples == 450
    assert records["digits_train"].n_samples == 1347
    assert records["digits"].dataset_sha256 != records["digits_train"].dataset_sha256
    assert {(r.arch_package, r.arch_version) for r in records.values()} == {("ckpt-eval", __version__)}
    assert {p.status for p in repository.pairs.values()} == {"done"}
    assert run_job(repository, parser).outcomes == (), "a finished pair is not evaluated again"


def test_a_pair_on_an_unregistered_dataset_fails_only_its_own_run(repository: FakeRepository, parser) -> None:
    repository.add_checkpoint("good", GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits", "gone"])
    repository.add_checkpoint("alien", GOOD, "resnet9000", sha256_file(CHECKPOINTS / GOOD), ["digits"])
    summary = run_job(repository, parser)
    by_pair = {(o.name, o.dataset): o for o in summary.outcomes}
    assert by_pair[("good", "digits")].ok
    assert by_pair[("good", "gone")].status == "failed"
    assert "dataset 'gone' is not registered" in (by_pair[("good", "gone")].error or "")
    assert by_pair[("alien", "digits")].status == "failed"
    assert "unknown architecture 'resnet9000'" in (by_pair[("alien", "digits")].error or "")
    assert not summary.all_passed


def test_a_new_dataset_version_queues_its_finished_pairs_again(
    repository: FakeRepository, parser, tmp_path: Path
) -> None:
    root, data = tmp_path / "checkpoints", tmp_path / "data"
    root.mkdir()
    torch.manual_seed(0)
    torch.save(build_model("fashion_cnn").state_dict(), root / "cnn.pt")
    (root / GOOD).write_bytes((CHECKPOINTS / GOOD).read_bytes())
    rng = np.random.default_rng(0)
    write_idx(data / "mnist" / "t10k-images-idx3-ubyte", rng.integers(0, 255, size=(32, 28, 28)))
    write_idx(data / "mnist" / "t10k-labels-idx1-ubyte", rng.integers(0, 10, size=32))
    repository.add_dataset_row("mnist", "idx", source="mnist")
    repository.add_checkpoint("cnn", "cnn.pt", "fashion_cnn", sha256_file(root / "cnn.pt"), ["mnist"])
    repository.add_checkpoint("good", GOOD, "digits_mlp", sha256_file(root / GOOD), ["digits"])
    settings = Settings(checkpoint_root=root, data_dir=data)
    assert len(run_job(repository, parser, settings=settings).outcomes) == 2
    assert run_job(repository, parser, settings=settings).outcomes == ()

    # As if both datasets had changed since: their pairs were evaluated on other versions.
    repository.pairs[("cnn", "mnist")].dataset_fingerprint = "0" * 64
    repository.pairs[("good", "digits")].dataset_fingerprint = "0" * 64
    summary = run_job(repository, parser, settings=settings)
    assert [(o.name, o.dataset) for o in summary.outcomes] == [("cnn", "mnist")], "embedded data is not re-read"
    assert repository.pairs[("cnn", "mnist")].attempt == 2
    assert repository.datasets_by_name["mnist"]["fingerprint"] == repository.runs[-1][1].dataset_sha256


def test_dataset_selection_and_force_touch_only_the_selected_pairs(repository: FakeRepository, parser) -> None:
    repository.add_checkpoint("good", GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits", "digits_train"])
    first = run_job(repository, parser, Selection(datasets=("digits_train",)))
    assert [(o.name, o.dataset) for o in first.outcomes] == [("good", "digits_train")]
    assert repository.pairs[("good", "digits")].status == "pending"
    forced = run_job(repository, parser, Selection(force=True, datasets=("digits_train",)))
    assert [(o.dataset, o.attempt) for o in forced.outcomes] == [("digits_train", 2)]
    assert repository.pairs[("good", "digits")].status == "pending"


def test_a_lease_lost_before_the_finish_writes_nothing(repository: FakeRepository, parser) -> None:
    repository.add_checkpoint("good", GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits"])
    repository.steal_on_finish = True
    summary = run_job(repository, parser)
    assert [o.status for o in summary.outcomes] == ["lost"]
    assert repository.runs == []
    assert summary.all_passed, "a lost pair is another worker's to record"
