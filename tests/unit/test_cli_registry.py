"""The dataset and attach commands in-process, over a FakeRegistry: what the operator types and sees."""

from __future__ import annotations

import json

import pytest

from ckpt_eval import cli
from tests.unit.fakes import FakeRegistry


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    fake = FakeRegistry()
    fake.add_dataset_row("digits", "digits", description="embedded digits")
    fake.add_checkpoint("good", "good.pt", "digits_mlp", "0" * 64, ["digits"])
    monkeypatch.setattr(cli, "_open_repository", lambda options: fake)
    return fake


def test_dataset_add_stores_the_definition(registry: FakeRegistry, tmp_path, capsys) -> None:
    columns = tmp_path / "columns.txt"
    columns.write_text("a\nb\n\nc\n")
    code = cli.main(
        ["dataset", "add", "lab", "--kind", "table", "--source", "lab.rows", "--features-file", str(columns),
         "--label-column", "y", "--class-names", "no, yes"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    stored = registry.datasets_by_name["lab"]
    assert stored["feature_columns"] == ["a", "b", "c"]
    assert stored["class_names"] == ["no", "yes"]
    assert stored["split"] == "test"
    assert "added dataset 'lab' (table)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "table", "--features", "a,,b", "--label-column", "y", "--source", "t"], "empty name"),
        (["--kind", "table", "--features", "a", "--features-file", "/dev/null", "--source", "t"], "not both"),
        (["--kind", "excel"], "'excel' is not one of"),
    ],
)
def test_dataset_add_refuses_bad_definitions_before_the_database(registry, capsys, args, message) -> None:
    assert cli.main(["dataset", "add", "bad", *args]) == 2
    assert message in capsys.readouterr().err
    assert "bad" not in registry.datasets_by_name


def test_dataset_list_and_show(registry: FakeRegistry, capsys) -> None:
    assert cli.main(["dataset", "list"]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines()[0].split()[:3] == ["dataset", "kind", "source"]
    assert "digits" in listing
    assert cli.main(["dataset", "show", "digits", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["dataset"]["description"] == "embedded digits"
    assert [e["checkpoint_name"] for e in shown["evaluations"]] == ["good"]
    assert cli.main(["dataset", "show", "nope"]) == 2


def test_attach_by_name_or_id(registry: FakeRegistry, capsys) -> None:
    registry.add_dataset_row("digits_train", "digits", split="train")
    assert cli.main(["attach", "1", "digits_train"]) == 0
    assert "attached checkpoint 1 'good' to dataset 'digits_train': pending" in capsys.readouterr().out
    assert registry.pairs[("good", "digits_train")].status == "pending"
    assert cli.main(["attach", "good", "digits_train"]) == 2
    assert cli.main(["attach", "good", "imagenet"]) == 2


@pytest.mark.parametrize("handle", ["²", "9" * 5000, "1\n", "-1"])
def test_attach_with_an_odd_handle_is_a_usage_error_not_a_crash(registry: FakeRegistry, capsys, handle) -> None:
    assert cli.main(["attach", handle, "digits"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_the_command_line_offers_exactly_the_dataset_kinds_that_exist() -> None:
    from ckpt_eval.datasets import KINDS

    assert cli.DATASET_KINDS == KINDS
