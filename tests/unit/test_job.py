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


def _statuses(repository: FakeRepository) -> dict[str, tuple[str, str | None]]:
    return {f"{name}/{dataset}": (p.status, p.lease_token) for (name, dataset), p in repository.pairs.items()}


def test_an_interrupt_while_a_claim_commits_still_hands_it_back(
    repository: FakeRepository, parser, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository.add_checkpoint("good", GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits"])
    claim = repository.claim

    def committed_then_interrupted(*args, **kwargs):
        claim(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(repository, "claim", committed_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_job(repository, parser)
    assert _statuses(repository) == {"good/digits": ("pending", None)}
    assert repository.runs == []


def test_an_interrupt_while_the_heartbeat_connects_hands_the_group_back(repository: FakeRepository, parser) -> None:
    for name in ("a", "b"):
        repository.add_checkpoint(name, GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits"])

    def connecting() -> FakeRepository:
        raise KeyboardInterrupt

    job = Job(
        Settings(checkpoint_root=CHECKPOINTS, data_dir=None),
        repository,  # type: ignore[arg-type]
        connecting,  # type: ignore[arg-type]
        parser,
        worker=Worker("test", 1, "x"),
    )
    with pytest.raises(KeyboardInterrupt):
        job.run(Selection())
    assert _statuses(repository) == {"a/digits": ("pending", None), "b/digits": ("pending", None)}


def test_an_interrupt_after_the_results_are_written_keeps_them(repository: FakeRepository, parser) -> None:
    repository.add_checkpoint("first", GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits"])
    repository.add_checkpoint("second", GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits"])

    def interrupt_at_the_first_outcome(outcome) -> None:
        raise KeyboardInterrupt

    job = Job(
        Settings(checkpoint_root=CHECKPOINTS, data_dir=None),
        repository,  # type: ignore[arg-type]
        lambda: repository,  # type: ignore[arg-type]
        parser,
        worker=Worker("test", 1, "x"),
        on_outcome=interrupt_at_the_first_outcome,
    )
    with pytest.raises(KeyboardInterrupt):
        job.run(Selection())
    # Both results were written in one transaction before the interrupt: handing back the second
    # one's lease is fenced by its token, which the finish cleared, so nothing is undone.
    assert _statuses(repository) == {"first/digits": ("done", None), "second/digits": ("done", None)}
    assert [claim.name for claim, _ in repository.runs] == ["first", "second"]
    assert [pair for pair, _ in repository.released] == [("second", "digits")]


def test_a_connection_cut_by_the_interrupt_hands_back_on_a_new_one(
    repository: FakeRepository, parser, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository.add_checkpoint("good", GOOD, "digits_mlp", sha256_file(CHECKPOINTS / GOOD), ["digits"])
    fresh = FakeRepository(pairs=repository.pairs, checkpoints=repository.checkpoints)
    opened: list[FakeRepository] = []

    def cut(*args: object) -> None:
        raise OSError("connection cut mid-statement")

    def interrupted(*args: object, **kwargs: object):
        raise KeyboardInterrupt

    def heartbeat_connection() -> FakeRepository:
        opened.append(fresh)
        return fresh

    monkeypatch.setattr(repository, "release", cut)
    monkeypatch.setattr(repository, "finish_many", interrupted)
    job = Job(
        Settings(checkpoint_root=CHECKPOINTS, data_dir=None),
        repository,  # type: ignore[arg-type]
        heartbeat_connection,  # type: ignore[arg-type]
        parser,
        worker=Worker("test", 1, "x"),
    )
    with pytest.raises(KeyboardInterrupt):
        job.run(Selection())
    assert _statuses(repository) == {"good/digits": ("pending", None)}
    assert [pair for pair, _ in fresh.released] == [("good", "digits")]
    assert fresh.closed >= 2  # the heartbeat's connection and the one the pair was handed back on
