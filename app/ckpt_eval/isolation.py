"""Parse untrusted checkpoints in a separate, bounded process (the worker never unpickles them).

One parser process is started ahead of the first checkpoint (torch imported once) and reused.
For each checkpoint the worker streams the file's bytes to it while hashing them, approves the
parse only when the hash matches, and waits with a wall-time deadline; the parser enforces the
CPU-time and memory budget on itself with ``setrlimit``. Past any bound the parser is killed and
replaced, and the checkpoint fails with the reason. The worker's main thread only waits on a
pipe meanwhile, so the lease's heartbeat thread keeps running.

Frames are a 4-byte big-endian length, a JSON header, then ``header["size"]`` raw bytes when the
header has a ``size``. Only safetensors bytes cross back: parsing them is safe and bounded.

Each request carries the architecture's state-dict layout (key -> shape, dtype), computed by the
worker from the installed plugin: the parser conforms the checkpoint to it and never imports
plugin code or builds a model itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from .errors import CheckpointError, CkptEvalError, EvaluationAborted
from .text import printable, quoted

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# A state dict's layout: key -> (shape, dtype), what the architecture needs exactly.
StateLayout = Mapping[str, "tuple[tuple[int, ...], torch.dtype]"]

_LENGTH = struct.Struct(">I")
MAX_HEADER_BYTES = 64 * 1024
# Requests come from the worker and carry the layout of the architecture: room for ~100,000 keys.
MAX_REQUEST_HEADER_BYTES = 16 * 1024 * 1024
# The dtypes a layout may name (str(torch.float32) without its "torch." prefix).
LAYOUT_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
PIPE_BYTES = 1024 * 1024  # the default /proc/sys/fs/pipe-max-size
STARTUP_SECONDS = 120.0
# Variables a parser may inherit: interpreter, locale, coverage, thread and allocator tuning. Nothing
# else (no credentials, no CKPT_EVAL_* settings) reaches the process that reads hostile bytes.
_INHERITED_PREFIXES = ("PATH", "PYTHON", "VIRTUAL_ENV", "LANG", "LC_", "HOME", "TMPDIR", "COVERAGE", "OMP_", "MKL_")
_INHERITED_PREFIXES += ("MALLOC_", "LD_LIBRARY_PATH")

DEFAULT_WALL_SECONDS = 120.0
DEFAULT_CPU_SECONDS = 60.0
DEFAULT_MEMORY_MB = 2048


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on parsing one checkpoint: wall time, CPU time, and memory beyond the parser's own."""

    wall_seconds: float = DEFAULT_WALL_SECONDS
    cpu_seconds: float = DEFAULT_CPU_SECONDS
    memory_bytes: int = DEFAULT_MEMORY_MB * 1024 * 1024


class ParserUnavailable(CkptEvalError):
    """The parser process cannot be started at all: a broken installation, not a bad checkpoint."""

    exit_code = 70


# --------------------------------------------------------------------------- framing (both sides)


def write_frame(stream: BinaryIO, header: dict[str, Any], payload: bytes | None = None) -> None:
    if payload is not None:
        header = {**header, "size": len(payload)}
    encoded = json.dumps(header).encode()
    stream.write(_LENGTH.pack(len(encoded)) + encoded)
    if payload is not None:
        stream.write(payload)
    stream.flush()


def read_frame(stream: BinaryIO, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any] | None:
    """The next header from a blocking stream; None at end of stream."""
    prefix = stream.read(_LENGTH.size)
    if not prefix:
        return None
    if len(prefix) < _LENGTH.size:
        raise EOFError
    (length,) = _LENGTH.unpack(prefix)
    if length > max_bytes:
        raise EOFError
    raw = stream.read(length)
    if len(raw) < length:
        raise EOFError
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise EOFError
    return header


def encode_layout(layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> list[list[Any]]:
    """A state-dict layout as JSON: [[key, [dims...], "float32"], ...]."""
    encoded = []
    for key, (shape, dtype) in layout.items():
        name = str(dtype).removeprefix("torch.")
        if name not in LAYOUT_DTYPES:
            raise CheckpointError(
                f"the architecture's entry {quoted(key, 60)} has dtype {name}, which is not supported"
            )
        encoded.append([key, [int(n) for n in shape], name])
    return encoded


def decode_layout(encoded: object) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The parser's side of ``encode_layout``; anything else is refused."""
    import torch

    if not isinstance(encoded, list) or not encoded:
        raise CheckpointError("the request carries no architecture layout")
    layout: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for item in encoded:
        if not (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], str)
            and isinstance(item[1], list)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in item[1])
            and item[2] in LAYOUT_DTYPES
        ):
            raise CheckpointError("the request carries a malformed architecture layout")
        layout[item[0]] = (tuple(item[1]), getattr(torch, item[2]))
    return layout


class _Timeout(Exception):
    pass


class _Died(Exception):
    pass


class _Pipe:
    """Non-blocking reads and writes on the parser's pipes, each bounded by a deadline."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self._write_fd = write_fd
        self._read_fd = read_fd
        for fd in (write_fd, read_fd):
            os.set_blocking(fd, False)
            # Larger pipes: a checkpoint of a few MB crosses in a few wake-ups instead of dozens.
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)

    def send(self, data: bytes | memoryview, deadline: float, should_stop: Callable[[], bool]) -> None:
        view = memoryview(data)
        while view:
            self._wait(self._write_fd, deadline, should_stop, writing=True)
            try:
                written = os.write(self._write_fd, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise _Died from None
            view = view[written:]

    def receive(self, size: int, deadline: float, should_stop: Callable[[], bool]) -> bytes:
        chunks: list[bytes] = []
        remaining = size
        while remaining:
            self._wait(self._read_fd, deadline, should_stop, writing=False)
            try:
                chunk = os.read(self._read_fd, min(remaining, 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                raise _Died
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def receive_frame(self, deadline: float, should_stop: Callable[[], bool], max_payload: int) -> tuple[dict, bytes]:
        (length,) = _LENGTH.unpack(self.receive(_LENGTH.size, deadline, should_stop))
        if length > MAX_HEADER_BYTES:
            raise _Died
        header = json.loads(self.receive(length, deadline, should_stop))
        if not isinstance(header, dict):
            raise _Died
        size = header.get("size", 0)
        if not isinstance(size, int) or not 0 <= size <= max_payload:
            raise _Died
        return header, self.receive(size, deadline, should_stop) if size else b""

    @staticmethod
    def _wait(fd: int, deadline: float, should_stop: Callable[[], bool], *, writing: bool) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout
            if should_stop():
                raise _Stopped
            # Short waits: the lease may be lost meanwhile, and an interrupt must be seen promptly.
            ready = (
                select.select([], [fd], [], min(left, 0.5)) if writing else select.select([fd], [], [], min(left, 0.5))
            )
            if ready[0] or ready[1]:
                return


class _Stopped(Exception):
    pass


@dataclass
class _Request:
    """A checkpoint sent to the parser: how it is named, until when it may take, and (for a whole
    file) the verified bytes the worker holds, from which the parser may point out tensors."""

    shown: str
    started: float
    deadline: float
    data: bytearray | None = None
    layout: StateLayout | None = None


class CheckpointParser:
    """A pre-started parser process, replaced whenever a checkpoint costs it its life."""

    def __init__(self, limits: ParseLimits | None = None) -> None:
        self.limits = limits or ParseLimits()
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe: _Pipe | None = None
        self._ready = False
        self._stderr_thread: threading.Thread | None = None
        self._pending: _Request | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> CheckpointParser:
        """Start the process now (torch imports while the worker does other things); idempotent."""
        if self._process is None:
            environment = {key: value for key, value in os.environ.items() if key.startswith(_INHERITED_PREFIXES)}
            environment["CKPT_EVAL_PARSER_PARENT"] = str(os.getpid())
            environment["OMP_NUM_THREADS"] = "1"
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "ckpt_eval.parser_process"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=environment,
                    close_fds=True,
                    start_new_session=True,  # a terminal's Ctrl-C goes to the worker, which ends the parser
                )
            except OSError as exc:
                raise ParserUnavailable(f"cannot start the checkpoint parser: {exc.strerror}") from None
            assert self._process.stdin is not None
            assert self._process.stdout is not None
            self._pipe = _Pipe(self._process.stdin.fileno(), self._process.stdout.fileno())
            self._ready = False
            self._stderr_thread = threading.Thread(
                target=_relay_stderr, args=(self._process,), name="parser-stderr", daemon=True
            )
            self._stderr_thread.start()
        return self

    def close(self) -> None:
        process, self._process, self._pipe = self._process, None, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()  # end of requests: the parser exits by itself
            process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        finally:
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> CheckpointParser:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _kill(self) -> int | None:
        self._pending = None
        process, self._process, self._pipe = self._process, None, None
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        returncode = process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        return returncode

    def _ensure_ready(self) -> _Pipe:
        self.start()
        assert self._pipe is not None
        if not self._ready:
            try:
                header, _ = self._pipe.receive_frame(time.monotonic() + STARTUP_SECONDS, lambda: False, 0)
            except (_Timeout, _Died, _Stopped, ValueError):
                returncode = self._kill()
                raise ParserUnavailable(f"the checkpoint parser did not start (exit {returncode})") from None
            if not header.get("ready"):
                self._kill()
                raise ParserUnavailable("the checkpoint parser did not start")
            self._ready = True
        return self._pipe

    # -- one checkpoint -------------------------------------------------------------------------
    def parse(
        self,
        blocks: Iterable[bytes],
        size: int,
        *,
        suffix: str,
        arch: str,
        name: str,
        approve: Callable[[], None],
        should_stop: Callable[[], bool] = lambda: False,
        layout: StateLayout | None = None,
    ) -> dict[str, torch.Tensor]:
        """Send ``size`` bytes to the parser; after ``approve()`` returns, let it parse; return the tensors.

        The tensors conform to ``layout`` (default: ``state_spec(arch)``, computed here in the worker).

        ``approve`` raising (a hash mismatch) cancels the parse and propagates. ``should_stop``
        returning True (the lease was lost) abandons it: EvaluationAborted is raised.
        """
        if self._pending is not None:
            raise RuntimeError("a submitted checkpoint has not been collected")
        encoded = self._request(name, arch, suffix, size, layout)
        pipe = self._ensure_ready()
        started = time.monotonic()
        request = _Request(quoted(name), started, started + self.limits.wall_seconds)
        consistent = False  # True once the parser is back between requests after a refusal
        try:
            pipe.send(encoded, request.deadline, should_stop)
            for block in blocks:
                pipe.send(block, request.deadline, should_stop)
            try:
                approve()
            except CkptEvalError:
                self._send_verdict(pipe, proceed=False, deadline=request.deadline)
                consistent = True
                raise
            self._send_verdict(pipe, proceed=True, deadline=request.deadline)
        except BaseException as exc:
            if consistent:
                raise
            self._fail(request, exc)
        return self._receive(pipe, request, should_stop)

    # -- a whole, verified checkpoint: the parser works while the worker does other things ------
    def submit(
        self,
        data: bytearray,
        *,
        suffix: str,
        arch: str,
        name: str,
        should_stop: Callable[[], bool] = lambda: False,
        layout: StateLayout | None = None,
    ) -> None:
        """Send a checkpoint whose bytes were already read and verified, approved at once; ``collect``
        returns its tensors. The parser starts on it as soon as it has the bytes, so whatever the
        worker does until ``collect`` (building the previous model, reading the next file) overlaps
        the parse. One submitted checkpoint at a time."""
        if self._pending is not None:
            raise RuntimeError("a submitted checkpoint has not been collected")
        if layout is None:
            from .architectures import state_spec

            layout = state_spec(arch)
        encoded = self._request(name, arch, suffix, len(data), layout, reply="offsets")
        pipe = self._ensure_ready()
        started = time.monotonic()
        request = _Request(quoted(name), started, started + self.limits.wall_seconds, data, layout)
        try:
            pipe.send(encoded, request.deadline, should_stop)
            pipe.send(data, request.deadline, should_stop)
            self._send_verdict(pipe, proceed=True, deadline=request.deadline)
        except BaseException as exc:
            self._fail(request, exc)
        self._pending = request

    def collect(self, should_stop: Callable[[], bool] = lambda: False) -> dict[str, torch.Tensor]:
        """The tensors of the submitted checkpoint (its errors, as ``parse`` raises them)."""
        request, self._pending = self._pending, None
        if request is None:
            raise RuntimeError("no checkpoint was submitted")
        pipe = self._pipe
        if pipe is None:  # the parser was replaced meanwhile
            raise CheckpointError(f"checkpoint {request.shown}: the parser stopped before it answered")
        return self._receive(pipe, request, should_stop)

    def extend_pending(self, seconds: float) -> None:
        """Time the worker spent elsewhere (not waiting for this parse) is not the parse's wall time."""
        if self._pending is not None:
            self._pending.deadline += seconds

    def discard_pending(self) -> None:
        """Give up a submitted checkpoint that will not be collected: the parser is replaced."""
        if self._pending is not None:
            self._pending = None
            self._kill()

    def _request(
        self, name: str, arch: str, suffix: str, size: int, layout: StateLayout | None, reply: str = "tensors"
    ) -> bytes:
        if layout is None:
            from .architectures import state_spec

            layout = state_spec(arch)
        request = {
            "name": name,
            "arch": arch,
            "layout": encode_layout(layout),
            "suffix": suffix,
            "size": size,
            "cpu_seconds": self.limits.cpu_seconds,
            "memory_bytes": self.limits.memory_bytes,
            "reply": reply,
        }
        encoded = json.dumps(request).encode()
        if len(encoded) > MAX_REQUEST_HEADER_BYTES:
            raise CheckpointError(
                f"architecture {quoted(arch, 60)}: its layout ({len(layout)} entries) is too large for the parser"
            )
        return _LENGTH.pack(len(encoded)) + encoded

    def _receive(self, pipe: _Pipe, request: _Request, should_stop: Callable[[], bool]) -> dict[str, torch.Tensor]:
        limits = self.limits
        try:
            header, payload = pipe.receive_frame(request.deadline, should_stop, max_payload=limits.memory_bytes)
        except BaseException as exc:
            self._fail(request, exc)
        log.debug("parsed %s in isolation in %.1f ms", request.shown, 1000 * (time.monotonic() - request.started))
        if not header.get("ok"):
            if header.get("kind") == "memory":
                self._kill()
                raise CheckpointError(
                    f"checkpoint {request.shown}: parsing exceeded the memory limit of "
                    f"{limits.memory_bytes // 2**20} MiB (--load-memory-mb)"
                )
            raise CheckpointError(printable(header.get("error") or "refused by the parser", 800))
        tensors = _tensors_from(payload, request.shown)
        if header.get("located") is not None:
            tensors.update(_located_tensors(header["located"], request, set(tensors)))
        return tensors

    def _fail(self, request: _Request, exc: BaseException) -> NoReturn:
        """The parser is somewhere inside a request that went wrong: replace it, and say why."""
        if isinstance(exc, _Timeout):
            self._kill()
            raise CheckpointError(
                f"checkpoint {request.shown}: parsing took longer than {self.limits.wall_seconds:g} s "
                "(wall-time limit, --load-timeout); the parser was stopped"
            ) from None
        if isinstance(exc, _Stopped):
            self._kill()
            raise EvaluationAborted from None
        if isinstance(exc, _Died):
            raise CheckpointError(f"checkpoint {request.shown}: {self._death_reason(self._kill())}") from None
        self._kill()  # interrupted mid-request
        raise exc

    def _send_verdict(self, pipe: _Pipe, *, proceed: bool, deadline: float) -> None:
        encoded = json.dumps({"proceed": proceed}).encode()
        pipe.send(_LENGTH.pack(len(encoded)) + encoded, deadline, lambda: False)
        if not proceed:
            header, _ = pipe.receive_frame(deadline, lambda: False, max_payload=0)
            log.debug("parser: %s", printable(header.get("error", ""), 200))

    def _death_reason(self, returncode: int | None) -> str:
        limits = self.limits
        if returncode == -signal.SIGXCPU:
            return f"parsing exceeded the CPU-time limit of {limits.cpu_seconds:g} s (--load-cpu-seconds)"
        if returncode in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS):
            return (
                f"the parser crashed on it (signal {-returncode}), e.g. past the memory limit of "
                f"{limits.memory_bytes // 2**20} MiB or nested too deeply"
            )
        if returncode is not None and returncode < 0:
            return f"the parser was killed by signal {-returncode}"
        return f"the parser stopped unexpectedly (exit {returncode})"


def _located_tensors(located: object, request: _Request, sent: set[str]) -> dict[str, torch.Tensor]:
    """Tensors the parser found verbatim in the file, taken from the bytes the worker verified (no
    copy: the tensors share that buffer). Shape and dtype are the worker's own layout's; the parser
    only says where the bytes are, and anything that does not fit the buffer or the layout is refused."""
    import torch

    data, layout = request.data, request.layout
    unreadable = CheckpointError(f"checkpoint {request.shown}: the parser sent an unreadable result")
    if data is None or layout is None or not isinstance(located, list):
        raise unreadable
    tensors: dict[str, torch.Tensor] = {}
    for item in located:
        if not (
            isinstance(item, list)
            and len(item) == 3
            and isinstance(item[0], str)
            and all(isinstance(n, int) and not isinstance(n, bool) for n in item[1:])
        ):
            raise unreadable
        key, offset, length = item
        if key not in layout or key in tensors or key in sent:
            raise unreadable
        shape, dtype = layout[key]
        count = math.prod(shape)
        if length != count * dtype.itemsize or offset < 0 or offset + length > len(data):
            raise unreadable
        if offset % dtype.itemsize:  # never from torch.save (records are 64-byte aligned): a copy, aligned
            raw = torch.frombuffer(bytearray(data[offset : offset + length]), dtype=dtype, count=count)
        else:
            raw = torch.frombuffer(data, dtype=dtype, count=count, offset=offset)
        tensors[key] = raw.view(shape)
    return tensors


def _tensors_from(payload: bytes, shown: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    if not payload:
        return {}
    try:
        return dict(load(payload))
    except Exception as exc:  # the parser only ever sends what safetensors wrote; anything else is refused
        raise CheckpointError(
            f"checkpoint {shown}: the parser sent an unreadable result ({exc.__class__.__name__})"
        ) from None


def _relay_stderr(process: subprocess.Popen[bytes]) -> None:
    """Library chatter from the parser (warnings, tracebacks) goes to the debug log, escaped and bounded."""
    stream = process.stderr
    if stream is None:
        return
    shown = 0
    try:
        for line in stream:
            if shown < 200:
                log.debug("parser: %s", printable(line.decode("utf-8", "replace").rstrip("\n"), 500))
                shown += 1
    except (OSError, ValueError):  # closed under us when the parser is replaced
        return
