"""Untrusted checkpoints are parsed in a separate process bounded in wall time, CPU time and memory.

Real parser processes, real torch, hostile files built byte by byte (tests/support/hostile.py).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from ckpt_eval.architectures import build_model
from ckpt_eval.checkpoints import (
    CheckpointRequest,
    check_zip_archive,
    inspect_checkpoint,
    load_checkpoint,
    load_checkpoints,
)
from ckpt_eval.errors import CheckpointError
from ckpt_eval.evaluate import EvaluationAborted
from ckpt_eval.isolation import CheckpointParser, ParseLimits
from tests.support import hostile

MiB = 1024**2


def digits_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(build_model("digits_mlp").state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def tight() -> Iterator[CheckpointParser]:
    """A parser with small bounds, so hostile files hit them within seconds."""
    with CheckpointParser(ParseLimits(wall_seconds=20, cpu_seconds=2, memory_bytes=256 * MiB)) as parser:
        yield parser


def put(root: Path, name: str, data: bytes) -> str:
    (root / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def assert_still_serves(parser: CheckpointParser, root: Path) -> None:
    """After any hostile file, the next good checkpoint loads (a replaced or surviving parser)."""
    sha = put(root, "good.pt", digits_bytes(1))
    loaded = load_checkpoint(root, "good.pt", "digits_mlp", sha, parser)
    assert not loaded.model.training


# --------------------------------------------------------------------------- the hash is not optional


@pytest.mark.parametrize("recorded", [None, ""])
def test_a_checkpoint_without_a_recorded_hash_is_never_loaded(tight: CheckpointParser, root: Path, recorded) -> None:
    put(root, "m.pt", digits_bytes())
    with pytest.raises(CheckpointError, match="no sha256 is recorded"):
        load_checkpoint(root, "m.pt", "digits_mlp", recorded, tight)


def test_register_mode_hashes_what_it_parsed(tight: CheckpointParser, root: Path) -> None:
    sha = put(root, "m.pt", digits_bytes())
    assert inspect_checkpoint(root, "m.pt", "digits_mlp", tight).sha256 == sha


def test_a_hash_mismatch_cancels_the_parse_and_keeps_the_parser(tight: CheckpointParser, root: Path) -> None:
    put(root, "m.pt", digits_bytes())
    before = tight._process.pid if tight._process else None
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(root, "m.pt", "digits_mlp", "a" * 64, tight)
    assert_still_serves(tight, root)
    assert tight._process is not None
    assert tight._process.pid == before


# --------------------------------------------------------------------------- CPU, wall time, memory


def test_a_hash_bomb_pickle_is_stopped_by_the_cpu_limit(tight: CheckpointParser, root: Path) -> None:
    data = hostile.hash_bomb_pickle()
    assert len(data) < 1024
    sha = put(root, "bomb.pt", data)
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="CPU-time limit of 2 s"):
        load_checkpoint(root, "bomb.pt", "digits_mlp", sha, tight)
    assert time.monotonic() - started < 15
    assert_still_serves(tight, root)


def test_the_wall_time_limit_stops_a_parse_that_takes_too_long(root: Path) -> None:
    sha = put(root, "bomb.pt", hostile.hash_bomb_pickle())
    with CheckpointParser(ParseLimits(wall_seconds=1.5, cpu_seconds=600)) as parser:
        load_checkpoint(root, "good0.pt", "digits_mlp", put(root, "good0.pt", digits_bytes()), parser)  # warm
        started = time.monotonic()
        with pytest.raises(CheckpointError, match=r"longer than 1\.5 s"):
            load_checkpoint(root, "bomb.pt", "digits_mlp", sha, parser)
        assert time.monotonic() - started < 5
        assert_still_serves(parser, root)


def test_the_heartbeat_thread_keeps_running_while_the_parser_works(root: Path) -> None:
    """The worker only waits on a pipe: other threads (the lease's heartbeat) are not starved."""
    import threading

    sha = put(root, "bomb.pt", hostile.hash_bomb_pickle())
    ticks: list[float] = []
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.1):
            ticks.append(time.monotonic())

    with CheckpointParser(ParseLimits(wall_seconds=3, cpu_seconds=600)) as parser:
        load_checkpoint(root, "good0.pt", "digits_mlp", put(root, "good0.pt", digits_bytes()), parser)
        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        with pytest.raises(CheckpointError):
            load_checkpoint(root, "bomb.pt", "digits_mlp", sha, parser)
        stop.set()
        thread.join()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= 20
    assert max(gaps) < 0.5


def test_a_checkpoint_needing_more_memory_than_allowed_fails_on_the_memory_limit(root: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"layers.1.weight": torch.zeros(40 * MiB // 4)}, buffer)  # 40 MiB of tensor data
    sha = put(root, "big.pt", buffer.getvalue())
    with CheckpointParser(ParseLimits(memory_bytes=64 * MiB)) as parser:
        with pytest.raises(CheckpointError, match="memory limit of 64 MiB"):
            load_checkpoint(root, "big.pt", "digits_mlp", sha, parser)
        assert_still_serves(parser, root)


def test_lost_lease_abandons_the_parse(root: Path) -> None:
    sha = put(root, "bomb.pt", hostile.hash_bomb_pickle())
    with CheckpointParser(ParseLimits(wall_seconds=60, cpu_seconds=600)) as parser:
        deadline = time.monotonic() + 1.0
        with pytest.raises(EvaluationAborted):
            load_checkpoint(root, "bomb.pt", "digits_mlp", sha, parser, should_stop=lambda: time.monotonic() > deadline)
        assert_still_serves(parser, root)


# --------------------------------------------------------------------------- archives refused before expanding


def test_a_deflate_bomb_record_is_refused_before_it_is_expanded(tight: CheckpointParser, root: Path) -> None:
    data = hostile.zip_bomb_checkpoint(expanded_bytes=1024 * MiB)
    assert len(data) < 5 * MiB
    sha = put(root, "zipbomb.pt", data)
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=r"compressed; torch\.save never compresses"):
        load_checkpoint(root, "zipbomb.pt", "digits_mlp", sha, tight)
    assert time.monotonic() - started < 5


def test_any_compressed_record_is_refused(tight: CheckpointParser, root: Path) -> None:
    torch.manual_seed(0)
    sha = put(root, "deflated.pt", hostile.compressed_record_checkpoint(build_model("digits_mlp").state_dict()))
    with pytest.raises(CheckpointError, match="compressed"):
        load_checkpoint(root, "deflated.pt", "digits_mlp", sha, tight)


def test_a_record_declaring_a_size_it_does_not_store_is_refused(tight: CheckpointParser, root: Path) -> None:
    sha = put(root, "oversized.pt", hostile.oversized_stored_record(3 * 1024**3))
    with pytest.raises(CheckpointError, match="declares a size it does not store"):
        load_checkpoint(root, "oversized.pt", "digits_mlp", sha, tight)


def test_archive_records_adding_up_past_the_limit_are_refused() -> None:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"a": torch.zeros(1000), "b": torch.zeros(1000)}, buffer)
    check_zip_archive(buffer.getvalue(), 10_000, "ok.pt")
    with pytest.raises(CheckpointError, match="exceed the parser's memory limit"):
        check_zip_archive(buffer.getvalue(), 6_000, "two.pt")


# --------------------------------------------------------------------------- library errors become checkpoint errors


@pytest.mark.parametrize("dtype", ["F8_E8M0", "F4", "C64", "X9", "F8_E4M3"])
def test_safetensors_dtypes_torch_lacks_are_checkpoint_errors(tight: CheckpointParser, root: Path, dtype: str) -> None:
    sha = put(root, "odd.safetensors", hostile.safetensors_with_dtype(dtype))
    with pytest.raises(CheckpointError):
        load_checkpoint(root, "odd.safetensors", "digits_mlp", sha, tight)


def test_deep_nesting_is_a_checkpoint_error(tight: CheckpointParser, root: Path) -> None:
    sha = put(root, "deep.pt", hostile.deep_nesting_pickle())
    with pytest.raises(CheckpointError):
        load_checkpoint(root, "deep.pt", "digits_mlp", sha, tight)
    assert_still_serves(tight, root)


def test_safetensors_with_extra_dtype_conversion_keeps_the_architecture_dtype(
    tight: CheckpointParser, root: Path
) -> None:
    torch.manual_seed(3)
    state = {key: value.double() for key, value in build_model("digits_mlp").state_dict().items()}
    sha = put(root, "double.safetensors", bytes(save_safetensors(state)))
    model = load_checkpoint(root, "double.safetensors", "digits_mlp", sha, tight).model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key].float())


def test_tied_tensors_in_a_checkpoint_load(tight: CheckpointParser, root: Path) -> None:
    shared = torch.ones(10)
    state = build_model("digits_mlp").state_dict()
    state["layers.1.bias"] = torch.zeros(32)
    state["layers.3.bias"] = shared
    buffer = io.BytesIO()
    torch.save({**state, "layers.3.bias": shared}, buffer)
    sha = put(root, "tied.pt", buffer.getvalue())
    model = load_checkpoint(root, "tied.pt", "digits_mlp", sha, tight).model
    assert torch.equal(model.state_dict()["layers.3.bias"], shared)


# --------------------------------------------------------------------------- what the parser process may see


def test_the_parser_inherits_no_secret_or_setting(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD", "leak-me-not-1234")
    monkeypatch.setenv("PGPASSWORD", "leak-me-not-5678")
    monkeypatch.setenv("CKPT_EVAL_CREDENTIALS", "/etc/ckpt-eval/db.credentials")
    with CheckpointParser() as parser:
        assert_still_serves(parser, root)
        assert parser._process is not None
        environ = Path(f"/proc/{parser._process.pid}/environ").read_bytes()
    assert b"leak-me-not" not in environ
    assert b"CKPT_EVAL_CREDENTIALS" not in environ


def test_the_parser_is_in_its_own_session_and_ends_with_close(root: Path) -> None:
    parser = CheckpointParser().start()
    try:
        assert_still_serves(parser, root)
        assert parser._process is not None
        pid = parser._process.pid
        assert os.getsid(pid) != os.getsid(0)  # a terminal's Ctrl-C is the worker's to handle
    finally:
        parser.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --------------------------------------------------------------------------- several checkpoints, pipelined


def requests(root: Path, items: list[tuple[str, str | None]]) -> list[tuple[str, CheckpointRequest]]:
    return [(name, CheckpointRequest(name, "digits_mlp", sha)) for name, sha in items]


def test_loading_several_gives_each_its_own_result_in_order(tight: CheckpointParser, root: Path) -> None:
    good = [put(root, f"g{i}.pt", digits_bytes(i)) for i in range(3)]
    bomb = put(root, "bomb.pt", hostile.hash_bomb_pickle())
    put(root, "tampered.pt", digits_bytes(7))
    items = [("g0.pt", good[0]), ("missing.pt", "0" * 64), ("bomb.pt", bomb), ("g1.pt", good[1]),
             ("tampered.pt", "f" * 64), ("nohash.pt", None), ("g2.pt", good[2])]  # fmt: skip
    results = dict(load_checkpoints(root, requests(root, items), tight))
    assert list(results) == [name for name, _ in items]
    for index in range(3):
        loaded = results[f"g{index}.pt"]
        assert not isinstance(loaded, Exception)
        alone = load_checkpoint(root, f"g{index}.pt", "digits_mlp", good[index], tight)
        assert loaded.sha256 == good[index]
        theirs_by_key = alone.model.state_dict()
        for key, ours in loaded.model.state_dict().items():
            theirs = theirs_by_key[key]
            assert torch.equal(ours, theirs), key
    assert "not found" in str(results["missing.pt"])
    assert "CPU-time limit" in str(results["bomb.pt"])
    assert "sha256 mismatch" in str(results["tampered.pt"])
    assert "no sha256 is recorded" in str(results["nohash.pt"])
    assert_still_serves(tight, root)


def test_a_lost_lease_stops_only_its_own_checkpoint(tight: CheckpointParser, root: Path) -> None:
    shas = [put(root, f"g{i}.pt", digits_bytes(i)) for i in range(3)]
    loading = [(f"g{i}.pt", CheckpointRequest(f"g{i}.pt", "digits_mlp", shas[i], should_stop=lambda i=i: i == 1))
               for i in range(3)]  # fmt: skip
    results = dict(load_checkpoints(root, loading, tight))
    assert isinstance(results["g1.pt"], EvaluationAborted)
    assert not isinstance(results["g0.pt"], Exception)
    assert not isinstance(results["g2.pt"], Exception)


def test_time_spent_by_the_consumer_is_not_the_parse_wall_time(root: Path) -> None:
    shas = [put(root, f"g{i}.pt", digits_bytes(i)) for i in range(3)]
    with CheckpointParser(ParseLimits(wall_seconds=1.0, cpu_seconds=30)) as parser:
        results = []
        for name, result in load_checkpoints(root, requests(root, [(f"g{i}.pt", shas[i]) for i in range(3)]), parser):
            results.append((name, result))
            time.sleep(1.5)  # a pass over the data, longer than the parser may take for one checkpoint
    assert [type(result).__name__ for _, result in results] == ["LoadedCheckpoint"] * 3


def test_closing_the_loader_early_leaves_a_parser_that_serves(root: Path) -> None:
    shas = [put(root, f"g{i}.pt", digits_bytes(i)) for i in range(3)]
    with CheckpointParser(ParseLimits(wall_seconds=20, cpu_seconds=30)) as parser:
        loading = load_checkpoints(root, requests(root, [(f"g{i}.pt", shas[i]) for i in range(3)]), parser)
        name, first = next(loading)
        assert name == "g0.pt"
        assert not isinstance(first, Exception)
        loading.close()  # g1 was in the parser: it is replaced
        assert_still_serves(parser, root)
