"""Checkpoint paths are untrusted input; checkpoint bytes are untrusted input. Real files, real torch."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from ckpt_eval.architectures import build_model, get_architecture
from ckpt_eval.checkpoints import (
    MAX_STORED_PATH_LENGTH,
    LoadedCheckpoint,
    load_checkpoint,
    resolve_checkpoint_path,
    validate_stored_path,
)
from ckpt_eval.errors import CheckpointError
from ckpt_eval.isolation import CheckpointParser, ParseLimits
from tests.support.reference_models import ReferenceFashionCNN

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def parser() -> Iterator[CheckpointParser]:
    """The real isolated parser process, shared by the tests of this module."""
    with CheckpointParser(ParseLimits(wall_seconds=60, cpu_seconds=30, memory_bytes=512 * 1024**2)) as started:
        yield started


def recorded_sha256(path: Path) -> str:
    """The hash a registry row would hold: the file's own when it is a readable file, else one matching nothing."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "0" * 64
    except OSError:
        return "0" * 64


def load(parser: CheckpointParser, root: Path, stored: str, arch: str = "digits_mlp") -> LoadedCheckpoint:
    """What a run does with a registry row whose sha256 was recorded from this very file."""
    return load_checkpoint(root, stored, arch, recorded_sha256(root / stored), parser)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def digits_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model("digits_mlp").state_dict()


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write(root: Path, name: str, data: bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def assert_same_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


# --------------------------------------------------------------------------- stored paths

BAD_PATHS = [
    pytest.param("", "empty", id="empty"),
    pytest.param("/etc/passwd", "absolute", id="absolute"),
    pytest.param("../x", "'..'", id="dotdot"),
    pytest.param("a/../../x", "'..'", id="nested-dotdot"),
    pytest.param("a/..", "'..'", id="trailing-dotdot"),
    pytest.param("a\\b", "backslash", id="backslash"),
    pytest.param("..\\x.pt", "backslash", id="windows-dotdot"),
    pytest.param("a\x00b.pt", "NUL", id="nul"),
    pytest.param("a" * 2000, "longer than", id="2000-chars"),
    pytest.param("~/x", "absolute", id="home"),
    pytest.param("~root/x.pt", "absolute", id="home-of-user"),
    pytest.param("//server/x.pt", "absolute", id="double-slash"),
]


@pytest.mark.parametrize(("stored", "message"), BAD_PATHS)
def test_validate_stored_path_rejects(stored: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        validate_stored_path(stored)


@pytest.mark.parametrize(("stored", "message"), BAD_PATHS)
def test_resolve_rejects_before_touching_the_filesystem(root: Path, stored: str, message: str) -> None:
    # Even when the target exists (here: a file one level above the root), the path is refused.
    (root.parent / "x").write_bytes(b"secret")
    with pytest.raises(CheckpointError, match=message):
        resolve_checkpoint_path(root, stored)


def test_error_message_for_hostile_path_is_bounded_and_printable() -> None:
    hostile = "a\x1b[31m" * 20 + "\x00" + "b" * 500
    with pytest.raises(CheckpointError) as caught:
        validate_stored_path(hostile)
    message = str(caught.value)
    assert message.isprintable()
    assert "\x1b" not in message
    assert len(message) < 400


def test_path_at_the_length_limit_is_accepted() -> None:
    stored = "a" * MAX_STORED_PATH_LENGTH
    assert str(validate_stored_path(stored)) == stored
    with pytest.raises(CheckpointError, match="longer than"):
        validate_stored_path(stored + "a")


@pytest.mark.parametrize("stored", ["x.pt", "sub/dir/x.pt", "./x.pt", "a..b.pt", "..hidden.pt", "x.pt~"])
def test_validate_accepts_ordinary_relative_paths(stored: str) -> None:
    assert not validate_stored_path(stored).is_absolute()


def test_resolve_finds_file_inside_root(root: Path) -> None:
    path = write(root, "runs/7/model.pt", b"x")
    assert resolve_checkpoint_path(root, "runs/7/model.pt") == path.resolve()


def test_missing_file_is_not_found(root: Path, parser: CheckpointParser) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint_path(root, "nope.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load(parser, root, "sub/nope.pt", "digits_mlp")


def test_root_that_is_not_a_directory(tmp_path: Path) -> None:
    not_dir = tmp_path / "file"
    not_dir.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a directory"):
        resolve_checkpoint_path(not_dir, "x.pt")
    with pytest.raises(CheckpointError, match="not a directory"):
        resolve_checkpoint_path(tmp_path / "missing-root", "x.pt")


def test_symlink_leaving_the_root_is_rejected(root: Path, outside: Path, parser: CheckpointParser) -> None:
    target = outside / "victim.pt"
    target.write_bytes(torch_bytes(digits_state()))
    (root / "link.pt").symlink_to(target)
    with pytest.raises(CheckpointError, match="leaves the checkpoint root"):
        resolve_checkpoint_path(root, "link.pt")
    with pytest.raises(CheckpointError, match="leaves the checkpoint root"):
        load(parser, root, "link.pt", "digits_mlp")


def test_relative_symlink_escaping_via_dotdot_is_rejected(root: Path, outside: Path, parser: CheckpointParser) -> None:
    (outside / "victim.pt").write_bytes(torch_bytes(digits_state()))
    (root / "link.pt").symlink_to(Path("..") / outside.name / "victim.pt")
    with pytest.raises(CheckpointError, match="leaves the checkpoint root"):
        load(parser, root, "link.pt", "digits_mlp")


def test_symlinked_directory_leaving_the_root_is_rejected(root: Path, outside: Path, parser: CheckpointParser) -> None:
    (outside / "victim.pt").write_bytes(torch_bytes(digits_state()))
    (root / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CheckpointError, match="leaves the checkpoint root"):
        load(parser, root, "sub/victim.pt", "digits_mlp")


def test_symlink_inside_the_root_is_accepted(root: Path, parser: CheckpointParser) -> None:
    state = digits_state()
    target = write(root, "store/real.pt", torch_bytes(state))
    (root / "alias.pt").symlink_to(target)
    assert resolve_checkpoint_path(root, "alias.pt") == target.resolve()
    loaded = load(parser, root, "alias.pt", "digits_mlp")
    assert_same_weights(loaded.model, state)


def test_root_given_through_a_symlink_still_works(tmp_path: Path, root: Path, parser: CheckpointParser) -> None:
    state = digits_state()
    write(root, "m.pt", torch_bytes(state))
    alias_root = tmp_path / "alias-root"
    alias_root.symlink_to(root, target_is_directory=True)
    loaded = load(parser, alias_root, "m.pt", "digits_mlp")
    assert_same_weights(loaded.model, state)


def test_dangling_symlink_is_not_found(root: Path, outside: Path, parser: CheckpointParser) -> None:
    (root / "dangling.pt").symlink_to(outside / "never-written.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load(parser, root, "dangling.pt", "digits_mlp")


def test_symlink_loop_is_rejected(root: Path, parser: CheckpointParser) -> None:
    (root / "a.pt").symlink_to(root / "b.pt")
    (root / "b.pt").symlink_to(root / "a.pt")
    with pytest.raises(CheckpointError):
        load(parser, root, "a.pt", "digits_mlp")


def test_directory_is_rejected_by_load(root: Path, parser: CheckpointParser) -> None:
    (root / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="not a regular file"):
        load(parser, root, "dir.pt", "digits_mlp")


def test_directory_is_rejected_by_resolve(root: Path) -> None:
    (root / "dir.pt").mkdir()
    with pytest.raises(CheckpointError):
        resolve_checkpoint_path(root, "dir.pt")


def test_fifo_does_not_hang_the_worker(root: Path, parser: CheckpointParser) -> None:
    fifo = root / "pipe.pt"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            load(parser, root, "pipe.pt", "digits_mlp")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(1.5)
    blocked = thread.is_alive()
    if blocked:  # release the reader so the thread ends: a writer that closes at once gives EOF
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    assert not blocked, "load_checkpoint blocked on a FIFO"
    assert isinstance(outcome[0], CheckpointError)


def test_a_file_larger_than_the_parser_may_hold_is_refused_before_reading(root: Path) -> None:
    write(root, "big.pt", b"x" * (64 * 1024**2 + 1))
    with (
        CheckpointParser(ParseLimits(memory_bytes=64 * 1024**2)) as small,
        pytest.raises(CheckpointError, match="larger than the parser's memory limit"),
    ):
        load(small, root, "big.pt")


# --------------------------------------------------------------------------- loading: happy paths


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".PT"])
def test_bare_state_dict_loads(root: Path, suffix: str, parser: CheckpointParser) -> None:
    state = digits_state(3)
    data = torch_bytes(state)
    write(root, f"m{suffix}", data)
    loaded = load(parser, root, f"m{suffix}", "digits_mlp")
    assert isinstance(loaded, LoadedCheckpoint)
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.size == len(data)
    assert loaded.path == (root / f"m{suffix}").resolve()
    assert_same_weights(loaded.model, state)
    assert not loaded.model.training


def test_torch_save_to_a_real_file_loads(root: Path, parser: CheckpointParser) -> None:
    state = digits_state(4)
    torch.save(state, root / "saved.pt")
    loaded = load(parser, root, "saved.pt", "digits_mlp")
    assert_same_weights(loaded.model, state)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict"])
def test_wrapped_state_dict_loads(root: Path, key: str, parser: CheckpointParser) -> None:
    state = digits_state(5)
    write(root, "wrapped.pt", torch_bytes({key: state, "epoch": 3, "lr": 0.01}))
    loaded = load(parser, root, "wrapped.pt", "digits_mlp")
    assert_same_weights(loaded.model, state)


def test_safetensors_loads(root: Path, parser: CheckpointParser) -> None:
    state = {k: v.contiguous() for k, v in digits_state(6).items()}
    save_file(state, str(root / "m.safetensors"))
    data = (root / "m.safetensors").read_bytes()
    loaded = load_checkpoint(root, "m.safetensors", "digits_mlp", hashlib.sha256(data).hexdigest(), parser)
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert_same_weights(loaded.model, state)


def test_loaded_model_computes_the_same_outputs(root: Path, parser: CheckpointParser) -> None:
    torch.manual_seed(7)
    original = build_model("digits_mlp").eval()
    write(root, "m.pt", torch_bytes(original.state_dict()))
    loaded = load(parser, root, "m.pt", "digits_mlp").model
    inputs = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(original(inputs), loaded(inputs))


# --------------------------------------------------------------------------- sha256


def test_sha256_mismatch_is_rejected(root: Path, parser: CheckpointParser) -> None:
    write(root, "m.pt", torch_bytes(digits_state()))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(root, "m.pt", "digits_mlp", "0" * 64, parser)


def test_sha256_of_a_swapped_file_is_rejected(root: Path, parser: CheckpointParser) -> None:
    registered = torch_bytes(digits_state(1))
    write(root, "m.pt", torch_bytes(digits_state(2)))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(root, "m.pt", "digits_mlp", hashlib.sha256(registered).hexdigest(), parser)


@pytest.mark.parametrize("case", ["lower", "upper"])
def test_matching_sha256_passes(root: Path, case: str, parser: CheckpointParser) -> None:
    data = torch_bytes(digits_state())
    write(root, "m.pt", data)
    digest = hashlib.sha256(data).hexdigest()
    expected = digest.upper() if case == "upper" else digest
    assert load_checkpoint(root, "m.pt", "digits_mlp", expected, parser).sha256 == digest


def test_sha256_checked_before_unpickling(root: Path, tmp_path: Path, parser: CheckpointParser) -> None:
    marker = tmp_path / "pwned-by-sha"
    write(root, "evil.pt", torch_bytes(Exploit(marker)))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(root, "evil.pt", "digits_mlp", "f" * 64, parser)
    assert not marker.exists()


# --------------------------------------------------------------------------- loading: corrupt files


def test_empty_file(root: Path, parser: CheckpointParser) -> None:
    write(root, "empty.pt", b"")
    with pytest.raises(CheckpointError, match="empty"):
        load(parser, root, "empty.pt", "digits_mlp")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(root: Path, suffix: str, parser: CheckpointParser) -> None:
    state = {k: v.contiguous() for k, v in digits_state().items()}
    if suffix == ".safetensors":
        save_file(state, str(root / "full.safetensors"))
        data = (root / "full.safetensors").read_bytes()
    else:
        data = torch_bytes(state)
    write(root, f"half{suffix}", data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load(parser, root, f"half{suffix}", "digits_mlp")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_random_bytes(root: Path, suffix: str, parser: CheckpointParser) -> None:
    data = random.Random(1234).randbytes(4096)
    write(root, f"noise{suffix}", data)
    with pytest.raises(CheckpointError):
        load(parser, root, f"noise{suffix}", "digits_mlp")


@pytest.mark.parametrize(
    "text",
    [b'{"weights": [1, 2, 3]}\n', b"#!/bin/sh\necho hi\n", b"PK\x03\x04 not really a zip"],
)
def test_text_files_starting_with_non_pickle_opcodes(root: Path, text: bytes, parser: CheckpointParser) -> None:
    write(root, "notes.pt", text)
    with pytest.raises(CheckpointError):
        load(parser, root, "notes.pt", "digits_mlp")


@pytest.mark.parametrize("text", [b"hello world\n", b"abc\n", b". \n"], ids=["hello", "abc", "dot"])
def test_plain_text_file_is_a_checkpoint_error(root: Path, text: bytes, parser: CheckpointParser) -> None:
    write(root, "readme.pt", text)
    with pytest.raises(CheckpointError):
        load(parser, root, "readme.pt", "digits_mlp")


def test_fuzzed_bytes_always_give_checkpoint_error(root: Path, parser: CheckpointParser) -> None:
    rng = random.Random(0)
    escaped = []
    for i in range(300):
        data = rng.randbytes(rng.randint(1, 200))
        write(root, "fuzz.pt", data)
        try:
            load(parser, root, "fuzz.pt", "digits_mlp")
        except CheckpointError:
            continue
        except Exception as exc:
            escaped.append((i, type(exc).__name__))
    assert not escaped


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".pkl", ""])
def test_unsupported_extension(root: Path, suffix: str, parser: CheckpointParser) -> None:
    write(root, f"model{suffix}", torch_bytes(digits_state()))
    with pytest.raises(CheckpointError, match="unsupported extension"):
        load(parser, root, f"model{suffix}", "digits_mlp")


def test_wrong_architecture(root: Path, parser: CheckpointParser) -> None:
    write(root, "fashion.pt", torch_bytes(build_model("fashion_cnn").state_dict()))
    with pytest.raises(CheckpointError, match="does not fit architecture digits_mlp"):
        load(parser, root, "fashion.pt", "digits_mlp")
    write(root, "digits.pt", torch_bytes(digits_state()))
    with pytest.raises(CheckpointError, match="does not fit architecture fashion_cnn"):
        load(parser, root, "digits.pt", "fashion_cnn")


def test_missing_key(root: Path, parser: CheckpointParser) -> None:
    state = digits_state()
    del state["layers.3.bias"]
    write(root, "missing.pt", torch_bytes(state))
    with pytest.raises(CheckpointError, match="architecture digits_mlp") as caught:
        load(parser, root, "missing.pt", "digits_mlp")
    assert "layers.3.bias" in str(caught.value)


def test_extra_key(root: Path, parser: CheckpointParser) -> None:
    state = digits_state()
    state["layers.9.weight"] = torch.zeros(3)
    write(root, "extra.pt", torch_bytes(state))
    with pytest.raises(CheckpointError, match="architecture digits_mlp") as caught:
        load(parser, root, "extra.pt", "digits_mlp")
    assert "layers.9.weight" in str(caught.value)


def test_wrong_shape(root: Path, parser: CheckpointParser) -> None:
    state = digits_state()
    state["layers.1.weight"] = torch.zeros(16, 64)
    write(root, "shape.pt", torch_bytes(state))
    with pytest.raises(CheckpointError, match="architecture digits_mlp"):
        load(parser, root, "shape.pt", "digits_mlp")


def test_wrong_architecture_error_is_one_line(root: Path, parser: CheckpointParser) -> None:
    write(root, "fashion.pt", torch_bytes(build_model("fashion_cnn").state_dict()))
    with pytest.raises(CheckpointError) as caught:
        load(parser, root, "fashion.pt", "digits_mlp")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda s: {**s, "epoch": 3}, id="int-value"),
        pytest.param(lambda s: {**s, "note": "hello"}, id="str-value"),
        pytest.param(lambda s: {**s, "nested": {"a": torch.zeros(1)}}, id="nested-dict"),
        pytest.param(lambda s: {**s, 5: torch.zeros(1)}, id="int-key"),
        pytest.param(lambda s: {"state_dict": {**s, "x": [1, 2]}}, id="wrapped-list-value"),
    ],
)
def test_non_tensor_entry(root: Path, payload, parser: CheckpointParser) -> None:
    write(root, "odd.pt", torch_bytes(payload(digits_state())))
    with pytest.raises(CheckpointError, match="not a named tensor"):
        load(parser, root, "odd.pt", "digits_mlp")


@pytest.mark.parametrize(
    "obj",
    [{}, [1, 2, 3], torch.zeros(3), 42, {"state_dict": {}}],
    ids=["empty-dict", "list", "tensor", "int", "empty-wrapped"],
)
def test_not_a_state_dict(root: Path, obj: object, parser: CheckpointParser) -> None:
    write(root, "odd.pt", torch_bytes(obj))
    with pytest.raises(CheckpointError, match="state dict"):
        load(parser, root, "odd.pt", "digits_mlp")


def test_unknown_architecture(root: Path, parser: CheckpointParser) -> None:
    write(root, "m.pt", torch_bytes(digits_state()))
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet50'"):
        load(parser, root, "m.pt", "resnet50")


def test_error_exit_code_is_data_error(root: Path, parser: CheckpointParser) -> None:
    with pytest.raises(CheckpointError) as caught:
        load(parser, root, "nope.pt", "digits_mlp")
    assert caught.value.exit_code == 65


# --------------------------------------------------------------------------- security: pickles that run code


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_payloads(marker: Path) -> dict[str, bytes]:
    return {
        "torch-save": torch_bytes(Exploit(marker)),
        "raw-pickle": pickle.dumps(Exploit(marker)),
        "raw-pickle-protocol-0": pickle.dumps(Exploit(marker), protocol=0),
        "raw-pickle-protocol-2": pickle.dumps(Exploit(marker), protocol=2),
        "torch-save-inside-state-dict": torch_bytes({**digits_state(), "layers.1.bias": Exploit(marker)}),
        "torch-save-wrapped": torch_bytes({"state_dict": digits_state(), "hook": Exploit(marker)}),
    }


@pytest.mark.parametrize(
    "form",
    [
        "torch-save",
        "raw-pickle",
        "raw-pickle-protocol-0",
        "raw-pickle-protocol-2",
        "torch-save-inside-state-dict",
        "torch-save-wrapped",
    ],
)
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_code_execution_payload_is_refused(
    root: Path, tmp_path: Path, form: str, suffix: str, parser: CheckpointParser
) -> None:
    marker = tmp_path / "pwned"
    data = _evil_payloads(marker)[form]
    write(root, f"x{suffix}", data)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(root, f"x{suffix}", "digits_mlp", hashlib.sha256(data).hexdigest(), parser)
    assert not marker.exists()


def test_sanity_the_payload_really_executes_with_plain_pickle(tmp_path: Path) -> None:
    # Proves the security tests above would notice: unrestricted unpickling does run the payload.
    marker = tmp_path / "pwned-plain"
    pickle.loads(pickle.dumps(Exploit(marker)))
    assert marker.exists()


# --------------------------------------------------------------------------- fashion_cnn reference layout


def test_fashion_cnn_layout_matches_reference() -> None:
    ours = build_model("fashion_cnn").state_dict()
    reference = ReferenceFashionCNN().state_dict()
    assert list(ours) == list(reference)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert get_architecture("fashion_cnn").input_shape == (1, 28, 28)


def test_reference_fashion_cnn_checkpoint_loads_strictly(root: Path, parser: CheckpointParser) -> None:
    torch.manual_seed(11)
    reference = ReferenceFashionCNN().eval()
    write(root, "fashion.pt", torch_bytes({"model_state_dict": reference.state_dict()}))
    loaded = load(parser, root, "fashion.pt", "fashion_cnn").model
    assert_same_weights(loaded, reference.state_dict())
    inputs = torch.rand(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(loaded(inputs), reference(inputs), atol=0, rtol=0)


# --------------------------------------------------------------------------- tensors taken from the verified bytes


def archive_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_the_parser_points_out_tensors_stored_verbatim_in_an_archive_and_in_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save as save_safetensors

    from ckpt_eval.checkpoints import locate_tensors

    torch.manual_seed(0)
    state = build_model("digits_mlp").state_dict()
    for suffix, data in ((".pt", archive_bytes(state)), (".safetensors", save_safetensors(state))):
        found = locate_tensors(data, suffix, state, max_compared=10 * len(data))
        assert set(found) == set(state), suffix
        for key, (offset, length) in found.items():
            assert data[offset : offset + length] == state[key].numpy().tobytes(), (suffix, key)


def test_what_is_not_stored_verbatim_is_not_pointed_out() -> None:
    from ckpt_eval.checkpoints import locate_tensors

    torch.manual_seed(0)
    state = build_model("digits_mlp").state_dict()
    data = archive_bytes({key: value.double() for key, value in state.items()})  # float64 on disk
    assert locate_tensors(data, ".pt", state, max_compared=10 * len(data)) == {}
    assert locate_tensors(b"not an archive", ".pt", state, max_compared=100) == {}
    # Comparing stops at the budget: a file of many equal-sized tensors costs at most that much.
    same = {f"t{i}": torch.zeros(1000) for i in range(50)}
    budget = 5 * 4000
    assert len(locate_tensors(archive_bytes(same), ".pt", same, max_compared=budget)) <= 5


@pytest.mark.parametrize(
    "located",
    [
        "not a list",
        [["layers.1.weight", 0]],
        [["layers.1.weight", "0", 8192]],
        [["layers.1.weight", True, 8192]],
        [["no.such.key", 0, 8192]],
        [["layers.1.weight", 0, 4]],  # a length that is not the layout's
        [["layers.1.weight", 10**9, 8192]],  # past the end of the file
        [["layers.1.weight", -64, 8192]],
        [["layers.1.bias", 0, 128], ["layers.1.bias", 0, 128]],  # twice
    ],
    ids=["not-a-list", "short-item", "string-offset", "bool-offset", "unknown-key", "wrong-length", "past-the-end",
         "negative", "twice"],
)  # fmt: skip
def test_a_parser_reply_pointing_anywhere_else_is_refused(located: object) -> None:
    from ckpt_eval.architectures import state_spec
    from ckpt_eval.isolation import _located_tensors, _Request

    request = _Request("'m.pt'", 0.0, 1.0, bytearray(16_384), state_spec("digits_mlp"))
    with pytest.raises(CheckpointError, match="the parser sent an unreadable result"):
        _located_tensors(located, request, sent=set())


def test_a_tensor_both_sent_and_pointed_out_is_refused() -> None:
    from ckpt_eval.architectures import state_spec
    from ckpt_eval.isolation import _located_tensors, _Request

    request = _Request("'m.pt'", 0.0, 1.0, bytearray(16_384), state_spec("digits_mlp"))
    with pytest.raises(CheckpointError, match="unreadable result"):
        _located_tensors([["layers.1.bias", 0, 128]], request, sent={"layers.1.bias"})


def test_pointed_out_tensors_share_the_verified_buffer_or_are_aligned_copies() -> None:
    from ckpt_eval.architectures import state_spec
    from ckpt_eval.isolation import _located_tensors, _Request

    data = bytearray(torch.arange(40, dtype=torch.float32).numpy().tobytes()) + bytearray(4)
    request = _Request("'m.pt'", 0.0, 1.0, data, state_spec("digits_mlp"))
    aligned = _located_tensors([["layers.3.bias", 4, 40]], request, sent=set())["layers.3.bias"]
    assert torch.equal(aligned, torch.arange(1, 11, dtype=torch.float32))
    assert aligned.data_ptr() == torch.frombuffer(data, dtype=torch.uint8).data_ptr() + 4  # no copy
    misaligned = _located_tensors([["layers.3.bias", 2, 40]], request, sent=set())["layers.3.bias"]
    assert misaligned.data_ptr() % 4 == 0
    assert misaligned.numpy().tobytes() == bytes(data[2:42])


def test_a_checkpoint_loads_from_the_bytes_that_were_verified(root: Path, parser: CheckpointParser) -> None:
    torch.manual_seed(3)
    state = build_model("fashion_cnn").state_dict()
    data = archive_bytes(state)
    (root / "cnn.pt").write_bytes(data)
    loaded = load_checkpoint(root, "cnn.pt", "fashion_cnn", hashlib.sha256(data).hexdigest(), parser)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    (root / "cnn.pt").write_bytes(b"\0" * len(data))  # the file changing afterwards changes nothing loaded
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
