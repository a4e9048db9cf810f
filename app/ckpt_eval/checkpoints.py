"""Safe checkpoint handling: paths and bytes named by the database are untrusted input.

A stored path is resolved inside the checkpoint root (no absolute paths, no ``..``, no symlink
that leaves the root) and read once; the very bytes that are hashed are the bytes handed to the
isolated parser process (``isolation.py``), so a file swapped between the check and the load
cannot slip through. Only after the hash matches the registry does the parser deserialise them,
in a process bounded in wall time, CPU time and memory, and send back plain tensors of exactly
the architecture's layout (safetensors): nothing hostile is ever unpickled in the worker.

The pure functions below (archive checks, deserialisation, conforming a state dict to an
architecture) run inside that parser process.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeVar

from .errors import CheckpointError
from .isolation import ParserUnavailable
from .text import printable, quoted

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .isolation import CheckpointParser, ParseLimits

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
SUFFIXES = (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)
MAX_STORED_PATH_LENGTH = 1024
MAX_ARCHIVE_ENTRIES = 100_000
STATE_DICT_KEYS = ("state_dict", "model_state_dict")
ZIP_MAGIC = b"PK\x03\x04"
# Files up to this size are read whole, hashed and verified before the parser gets them, so it
# can parse one while the worker reads the next; larger ones stream through it while hashed.
PREFETCH_BYTES = 64 * 1024 * 1024
NO_RECORDED_HASH = (
    "no sha256 is recorded for this checkpoint; an unverified file is never loaded "
    "(register it with `ckpt-eval register`, or have the schema owner set checkpoints.sha256)"
)
K = TypeVar("K")
_READ_BLOCK = 1 << 20
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    sha256: str
    size: int
    model: nn.Module


def validate_stored_path(stored: str) -> PurePosixPath:
    """Reject stored paths that could point outside the root before touching the filesystem."""
    if not stored:
        raise CheckpointError("checkpoint path is empty")
    if len(stored) > MAX_STORED_PATH_LENGTH:
        raise CheckpointError(f"checkpoint path is longer than {MAX_STORED_PATH_LENGTH} characters")
    if "\x00" in stored:
        raise CheckpointError(f"checkpoint path {quoted(stored)} contains a NUL byte")
    if "\\" in stored:
        raise CheckpointError(f"checkpoint path {quoted(stored)} contains a backslash")
    relative = PurePosixPath(stored)
    if relative.is_absolute() or stored.startswith("~"):
        raise CheckpointError(f"checkpoint path {quoted(stored)} is absolute; paths are relative to the root")
    if ".." in relative.parts:
        raise CheckpointError(f"checkpoint path {quoted(stored)} contains '..'")
    return relative


def resolve_checkpoint_path(root: Path, stored: str) -> Path:
    """Resolve ``stored`` inside ``root``; the result is a regular file whose real path is under the root."""
    relative = validate_stored_path(stored)
    real_root = root.resolve(strict=False)
    if not real_root.is_dir():
        raise CheckpointError(f"checkpoint root {printable(root)} is not a directory")
    try:
        real = (real_root / relative).resolve(strict=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {quoted(stored)} not found under the checkpoint root") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop on older Pythons
        raise CheckpointError(f"checkpoint {quoted(stored)} cannot be resolved: {exc.__class__.__name__}") from None
    if not real.is_relative_to(real_root):
        raise CheckpointError(f"checkpoint path {quoted(stored)} leaves the checkpoint root (symlink)")
    if not real.is_file():
        raise CheckpointError(f"checkpoint path {quoted(stored)} is not a regular file")
    return real


class _CheckpointFile:
    """An open checkpoint: a regular file of bounded size, read exactly once in blocks."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.name = quoted(path.name)
        try:
            # O_NONBLOCK: opening a FIFO planted in the root must not hang the worker.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise CheckpointError(f"checkpoint {self.name} cannot be opened: {exc.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise CheckpointError(f"checkpoint {self.name} is not a regular file")
        if info.st_size > max_bytes:
            os.close(fd)
            raise CheckpointError(
                f"checkpoint {self.name} is {info.st_size} bytes, larger than the parser's memory limit "
                f"({max_bytes} bytes; raise --load-memory-mb)"
            )
        if info.st_size == 0:
            os.close(fd)
            raise CheckpointError(f"checkpoint {self.name} is empty")
        self.size = info.st_size
        self._stream = os.fdopen(fd, "rb")
        self._digest = hashlib.sha256()

    def blocks(self) -> Iterator[bytes]:
        """Exactly ``size`` bytes, hashed as they are read; a file that changes size meanwhile is refused."""
        remaining = self.size
        while remaining:
            block = self._stream.read(min(_READ_BLOCK, remaining))
            if not block:
                raise CheckpointError(f"checkpoint {self.name} shrank while it was being read")
            self._digest.update(block)
            remaining -= len(block)
            yield block

    def read_all(self) -> bytearray:
        """Exactly ``size`` bytes in one buffer, hashed as they are read (the buffer the worker keeps)."""
        buffer = bytearray(self.size)
        view = memoryview(buffer)
        done = 0
        while done < self.size:
            count = self._stream.readinto(view[done : min(done + _READ_BLOCK, self.size)])
            if not count:
                raise CheckpointError(f"checkpoint {self.name} shrank while it was being read")
            self._digest.update(view[done : done + count])
            done += count
        return buffer

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> _CheckpointFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(_READ_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CheckpointRequest:
    """A checkpoint to load: where the registry says it is, the architecture it must fit, and the
    sha256 it must have (None: only hash what is parsed, as ``register`` does)."""

    stored_path: str
    arch: str
    expected_sha256: str | None
    should_stop: Callable[[], bool] = lambda: False
    verify: bool = True  # False: register mode, the file is hashed, not checked against a record


@dataclass
class _Prepared:
    """A resolved checkpoint; ``data`` holds its verified bytes when it is small enough to hold whole."""

    request: CheckpointRequest
    path: Path
    suffix: str
    layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]]
    data: bytearray | None = None
    sha256: str = ""
    size: int = 0


def _approver(request: CheckpointRequest) -> Callable[[str], None]:
    expected = request.expected_sha256.lower() if request.verify and request.expected_sha256 else None

    def approve(actual: str) -> None:
        if expected is not None and actual != expected:
            raise CheckpointError(
                f"checkpoint {quoted(request.stored_path)}: sha256 mismatch "
                f"(registry {printable(expected[:12])}..., file {actual[:12]}...)"
            )

    return approve


def _prepare(root: Path, request: CheckpointRequest, limits: ParseLimits) -> _Prepared:
    """Resolve the path inside the root and, for a file of at most PREFETCH_BYTES, read, hash and
    verify it whole (the bytes that were hashed are the bytes the parser will get)."""
    from .architectures import state_spec
    from .errors import EvaluationAborted

    if request.verify and not request.expected_sha256:
        raise CheckpointError(NO_RECORDED_HASH)
    if request.should_stop():
        raise EvaluationAborted
    path = resolve_checkpoint_path(root, request.stored_path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(f"checkpoint {quoted(path.name)}: unsupported extension (use .pt, .pth or .safetensors)")
    # The layout is computed here, from the installed plugin; the parser process only conforms the
    # checkpoint to it and never imports plugin code.
    prepared = _Prepared(request, path, suffix, state_spec(request.arch))
    with _CheckpointFile(path, limits.memory_bytes) as checkpoint:
        if checkpoint.size > PREFETCH_BYTES:
            return prepared  # streamed through the parser while it is hashed (_parse_streamed)
        prepared.data = checkpoint.read_all()
        prepared.sha256, prepared.size = checkpoint.sha256, checkpoint.size
    _approver(request)(prepared.sha256)
    return prepared


def _parse_streamed(prepared: _Prepared, parser: CheckpointParser) -> LoadedCheckpoint:
    """A checkpoint too large to hold whole: sent in blocks while it is hashed, parsed once approved."""
    request, path = prepared.request, prepared.path
    approve = _approver(request)
    with _CheckpointFile(path, parser.limits.memory_bytes) as checkpoint:
        state = parser.parse(
            checkpoint.blocks(),
            checkpoint.size,
            suffix=prepared.suffix,
            arch=request.arch,
            layout=prepared.layout,
            name=path.name,
            approve=lambda: approve(checkpoint.sha256),
            should_stop=request.should_stop,
        )
        digest, size = checkpoint.sha256, checkpoint.size
    return LoadedCheckpoint(path, digest, size, load_into_architecture(state, request.arch, path.name))


LoadResult = LoadedCheckpoint | Exception


def load_checkpoints(
    root: Path, requests: Iterable[tuple[K, CheckpointRequest]], parser: CheckpointParser
) -> Iterator[tuple[K, LoadResult]]:
    """Load checkpoints one after another, each with its own result (a model, or the exception that
    ended it: CheckpointError, EvaluationAborted when its ``should_stop`` said so, ...).

    While the parser deserialises one checkpoint, the worker builds the previous one's module and
    reads and hashes the next file: each is parsed in isolation and verified as ``load_checkpoint``
    does, only not one after the other. ParserUnavailable (no parser can start) and interrupts are
    raised. Closing the iterator early replaces the parser if a checkpoint was still in it.
    """
    in_flight: _Prepared | None = None
    in_flight_key: K | None = None
    behind: list[tuple[K, LoadResult]] = []  # refused before the parser, queued behind the one in it
    # A reader thread reads and hashes the next file (the GIL is released while it does) while this
    # thread talks to the parser and builds modules.
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-reader")
    items = iter(requests)

    def read_next() -> tuple[K, CheckpointRequest, Future[_Prepared]] | None:
        item = next(items, None)
        if item is None:
            return None
        return item[0], item[1], reader.submit(_prepare, root, item[1], parser.limits)

    try:
        upcoming = read_next()
        while upcoming is not None:
            key, request, reading = upcoming
            upcoming = read_next()
            try:
                prepared = reading.result()
            except Exception as exc:
                if in_flight is not None:
                    behind.append((key, exc))
                    continue
                yield key, exc
                continue
            previous = None
            if in_flight is not None:  # its tensors now, its module once the parser has the next one
                previous = (in_flight_key, in_flight, _collected(parser, in_flight))
                in_flight = in_flight_key = None
            refused: Exception | None = None
            if prepared.data is not None:  # the parser starts on it while the previous module is built
                try:
                    parser.submit(
                        prepared.data,
                        suffix=prepared.suffix,
                        arch=request.arch,
                        name=prepared.path.name,
                        layout=prepared.layout,
                        should_stop=request.should_stop,
                    )
                    in_flight, in_flight_key = prepared, key
                except ParserUnavailable:
                    raise
                except Exception as exc:
                    refused = exc
                prepared.data = None  # the parser has the bytes now
            done = [(previous[0], _built(previous[1], previous[2]))] if previous is not None else []
            done += behind
            behind = []
            for finished in done:
                started = time.monotonic()
                yield finished  # type: ignore[misc]
                parser.extend_pending(time.monotonic() - started)  # the consumer's time is not the parse's
            if refused is not None:
                yield key, refused
            elif in_flight is None:  # too large to hold: streamed, with nothing else in the parser
                try:
                    result: LoadResult = _parse_streamed(prepared, parser)
                except ParserUnavailable:
                    raise
                except Exception as exc:
                    result = exc
                yield key, result
        if in_flight is not None:
            last = (in_flight_key, _built(in_flight, _collected(parser, in_flight)))
            in_flight = None
            yield last  # type: ignore[misc]
        yield from behind
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        if in_flight is not None:
            parser.discard_pending()


def _collected(parser: CheckpointParser, prepared: _Prepared) -> Mapping[str, torch.Tensor] | Exception:
    try:
        return parser.collect(prepared.request.should_stop)
    except ParserUnavailable:
        raise
    except Exception as exc:
        return exc


def _built(prepared: _Prepared, tensors: Mapping[str, torch.Tensor] | Exception) -> LoadResult:
    if isinstance(tensors, Exception):
        return tensors
    try:
        model = load_into_architecture(tensors, prepared.request.arch, prepared.path.name)
    except Exception as exc:
        return exc
    return LoadedCheckpoint(prepared.path, prepared.sha256, prepared.size, model)


def _load_one(root: Path, request: CheckpointRequest, parser: CheckpointParser) -> LoadedCheckpoint:
    ((_, result),) = list(load_checkpoints(root, [(None, request)], parser))
    if isinstance(result, Exception):
        raise result
    return result


def load_checkpoint(
    root: Path,
    stored_path: str,
    arch: str,
    expected_sha256: str | None,
    parser: CheckpointParser,
    should_stop: Callable[[], bool] = lambda: False,
) -> LoadedCheckpoint:
    """Load a registered checkpoint: only against its recorded sha256, parsed in isolation."""
    return _load_one(root, CheckpointRequest(stored_path, arch, expected_sha256, should_stop), parser)


def inspect_checkpoint(root: Path, stored_path: str, arch: str, parser: CheckpointParser) -> LoadedCheckpoint:
    """Check a file the way a run will (inside the root, parsed in isolation, strict fit) and hash it."""
    return _load_one(root, CheckpointRequest(stored_path, arch, None, verify=False), parser)


def load_into_architecture(state: Mapping[str, torch.Tensor], arch: str, name: str) -> nn.Module:
    """Load parser output (plain tensors of the architecture's layout) strictly into a fresh module."""
    import itertools

    from .architectures import build_model, build_model_without_memory

    # Built without memory and given the parser's tensors as they are: no random initialisation
    # that would be overwritten at once, no copy.
    model = build_model_without_memory(arch)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        detail = printable(" ".join(str(exc).split()), 500)
        raise CheckpointError(f"checkpoint {quoted(name)} does not fit architecture {arch}: {detail}") from None
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        # A plugin module with state outside its state dict (a non-persistent buffer): that state
        # comes from a real build, the checkpoint's tensors are copied in.
        model = build_model(arch)
        model.load_state_dict(state, strict=True)
    model.eval()
    return model


# --------------------------------------------------------------------------- inside the parser process


def check_zip_archive(data: bytes | memoryview, max_expanded: int, name: str) -> None:
    """Refuse an archive before anything in it is expanded.

    torch.save writes every record stored (uncompressed); a compressed record, one whose declared
    size differs from its stored size, or records adding up to more than the parser may hold are
    refused, whatever the central directory or the local headers claim.
    """
    shown = quoted(name)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {shown} is not a valid archive ({printable(exc, 200)})") from None
    if len(infos) > MAX_ARCHIVE_ENTRIES:
        raise CheckpointError(f"checkpoint {shown} has {len(infos)} archive records (at most {MAX_ARCHIVE_ENTRIES})")
    total = 0
    for info in infos:
        record = quoted(info.filename, 80)
        if info.compress_type != zipfile.ZIP_STORED or _local_method(data, info.header_offset) != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"checkpoint {shown}: archive record {record} is compressed; torch.save never compresses, "
                "so it is refused before expanding"
            )
        if info.file_size != info.compress_size:
            raise CheckpointError(f"checkpoint {shown}: archive record {record} declares a size it does not store")
        total += info.file_size
        if info.file_size > max_expanded or total > max_expanded:
            raise CheckpointError(
                f"checkpoint {shown}: archive records exceed the parser's memory limit ({max_expanded} bytes)"
            )


def _local_method(data: bytes | memoryview, offset: int) -> int:
    """The compression method of a record's local header (which a reader may trust over the directory)."""
    header = bytes(data[offset : offset + _LOCAL_HEADER.size])
    if len(header) < _LOCAL_HEADER.size or header[:4] != ZIP_MAGIC:
        return -1
    return int(_LOCAL_HEADER.unpack(header)[3])


def stored_regions(data: bytes | bytearray | memoryview, suffix: str) -> list[tuple[int, int]]:
    """Where a file keeps raw tensor bytes: (offset, length) of each record of a torch archive (its
    local header skipped) or each safetensors entry. Called on a file the parser has already loaded."""
    import json

    view = memoryview(data)
    regions: list[tuple[int, int]] = []
    if suffix == SAFETENSORS_SUFFIX:
        length = int.from_bytes(view[:8], "little")
        header = json.loads(bytes(view[8 : 8 + length]))
        base = 8 + length
        for key, entry in header.items():
            if key != "__metadata__":
                begin, end = entry["data_offsets"]
                regions.append((base + int(begin), int(end) - int(begin)))
    elif bytes(view[:4]) == ZIP_MAGIC:
        with zipfile.ZipFile(io.BytesIO(view)) as archive:
            for info in archive.infolist():
                local = bytes(view[info.header_offset : info.header_offset + _LOCAL_HEADER.size])
                if len(local) == _LOCAL_HEADER.size:
                    *_, name_length, extra_length = _LOCAL_HEADER.unpack(local)
                    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
                    regions.append((start, info.file_size))
    return regions


def locate_tensors(
    data: bytes | bytearray | memoryview, suffix: str, tensors: Mapping[str, torch.Tensor], max_compared: int
) -> dict[str, tuple[int, int]]:
    """The tensors whose bytes lie verbatim in ``data`` (a whole record or entry of the same length),
    with their (offset, length): the worker, which holds the very bytes it verified, can take those
    tensors from them instead of receiving a copy. Comparing stops past ``max_compared`` bytes (a
    file of many identical tensors costs no more than a few reads of itself); the rest is sent."""
    import numpy as np
    import torch

    by_length: dict[int, list[int]] = {}
    for offset, length in stored_regions(data, suffix):
        if length > 0 and offset + length <= len(data):
            by_length.setdefault(length, []).append(offset)
    raw = np.frombuffer(data, dtype=np.uint8)
    found: dict[str, tuple[int, int]] = {}
    compared = 0
    for key, tensor in tensors.items():
        length = tensor.numel() * tensor.element_size()
        if not tensor.is_contiguous() or length == 0:
            continue
        ours = tensor.reshape(-1).view(torch.uint8).numpy()
        for offset in by_length.get(length, ()):
            if compared + length > max_compared:
                return found
            compared += length
            if np.array_equal(raw[offset : offset + length], ours):
                found[key] = (offset, length)
                break
    return found


def deserialize_state_dict(data: bytes | memoryview, suffix: str, name: str, max_expanded: int) -> dict[str, object]:
    """Turn checkpoint bytes into a mapping of tensors without ever running pickled code."""
    import torch

    shown = quoted(name)
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load as load_safetensors

        try:
            return dict(load_safetensors(bytes(data)))
        except Exception as exc:  # SafetensorError, and KeyError/TypeError for dtypes torch lacks
            raise CheckpointError(
                f"checkpoint {shown} is not a valid safetensors file: {exc.__class__.__name__}: {printable(exc, 200)}"
            ) from None
    if suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"checkpoint {shown}: unsupported extension (use .pt, .pth or .safetensors)")
    if bytes(data[:4]) == ZIP_MAGIC:
        check_zip_archive(data, max_expanded, name)
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # every loader failure on a bad file means "not a checkpoint we accept"
        if is_allocation_failure(exc):
            raise MemoryError from None
        raise CheckpointError(f"checkpoint {shown} refused: {_loader_reason(exc)}") from None
    return extract_state_dict(loaded, name)


def is_allocation_failure(exc: BaseException) -> bool:
    """torch reports a failed allocation (the parser's memory limit) as a RuntimeError."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "failed to allocate" in text


def _loader_reason(exc: BaseException) -> str:
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's message starts with generic advice; the line naming the refused global says what it was.
        telling = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line]
        first_line = (telling or lines or ["rejected"])[0]
        return f"it is not a plain tensor state dict (weights_only load rejected it: {printable(first_line, 200)})"
    return f"not a readable PyTorch checkpoint ({exc.__class__.__name__})"


def extract_state_dict(loaded: object, name: str) -> dict[str, object]:
    """Accept a bare state dict or a dict holding one under ``state_dict``/``model_state_dict``."""
    import torch

    if isinstance(loaded, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(f"checkpoint {quoted(name)} does not hold a state dict")
    state: dict[str, object] = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {quoted(name)}: entry {quoted(str(key), 60)} is not a named tensor")
        state[key] = value
    return state


def conform_to_architecture(
    state: Mapping[str, object], spec: Mapping[str, tuple[tuple[int, ...], torch.dtype]], arch: str, name: str
) -> dict[str, torch.Tensor]:
    """Strict fit, as ``load_state_dict(strict=True)`` checks it, then plain dense tensors of the layout.

    The result holds exactly the architecture's keys, shapes and dtypes, each in its own contiguous
    storage, so it serialises to safetensors and loads into the architecture in the worker unchanged.
    """
    import torch

    shown = quoted(name)
    missing = sorted(set(spec) - set(state))
    unexpected = sorted(set(state) - set(spec))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing key(s): " + ", ".join(quoted(k, 60) for k in missing[:10]))
        if unexpected:
            parts.append("unexpected key(s): " + ", ".join(quoted(k, 60) for k in unexpected[:10]))
        raise CheckpointError(f"checkpoint {shown} does not fit architecture {arch}: {'; '.join(parts)}")
    result: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, (shape, dtype) in spec.items():
        tensor = state[key]
        assert isinstance(tensor, torch.Tensor)
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_complex():
            raise CheckpointError(f"checkpoint {shown}: entry {quoted(key, 60)} is not a dense real tensor")
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(
                f"checkpoint {shown} does not fit architecture {arch}: {quoted(key, 60)} has shape "
                f"{tuple(tensor.shape)}, the architecture needs {tuple(shape)}"
            )
        plain = tensor.detach().to(dtype=dtype).contiguous()
        owns_storage = plain.untyped_storage().nbytes() == plain.numel() * plain.element_size()
        if plain.data_ptr() in seen or not owns_storage:
            plain = plain.clone()
        seen.add(plain.data_ptr())
        result[key] = plain
    return result
