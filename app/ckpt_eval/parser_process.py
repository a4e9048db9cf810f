"""The isolated checkpoint parser: ``python -m ckpt_eval.parser_process``, started by ``isolation.py``.

It reads requests on stdin and answers on stdout (the framing is in ``isolation.py``). For each
checkpoint it lowers its own CPU-time and address-space limits to the request's budget, reads
the bytes, waits for the worker's approval (the sha256 matched), deserialises them with
``torch.load(weights_only=True)`` or safetensors, conforms them strictly to the architecture's
layout that the request carries (this process never imports an architecture plugin nor builds a
model) and sends back safetensors bytes. A checkpoint that spins or balloons is stopped by the kernel
(SIGXCPU, failed allocations) or killed by the worker; either way only this process is lost.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import resource
import signal
import sys
import traceback
from typing import BinaryIO

from .allocator import retain_freed_memory
from .isolation import MAX_REQUEST_HEADER_BYTES, decode_layout, read_frame, write_frame

PARSER_RETAIN_BYTES = 64 * 1024 * 1024

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Never outlive the worker, even while stuck in C code that ignores a closed stdin."""
    # Not on Linux: stdin's end and RLIMIT_CPU still bound the process.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)


def _address_space_in_use() -> int:
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _limit(cpu_seconds: float, memory_bytes: int) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_used = usage.ru_utime + usage.ru_stime
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(cpu_used + cpu_seconds), resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_AS, (_address_space_in_use() + memory_bytes, resource.RLIM_INFINITY))


def _unlimit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _read_exact(stream: BinaryIO, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = stream.readinto(view[received:])  # type: ignore[attr-defined]
        if not count:
            raise EOFError
        received += count
    return buffer


def _parse(header: dict[str, object], data: bytearray) -> tuple[dict[str, object], bytes]:
    """The reply to one request: its header and its payload (safetensors of the tensors to send).

    When the worker holds the file's bytes (``"reply": "offsets"``), tensors found verbatim in them
    are answered with where they are, and only the others are sent.
    """
    from safetensors.torch import save

    from .checkpoints import conform_to_architecture, deserialize_state_dict, locate_tensors

    name = str(header["name"])
    arch = str(header["arch"])
    suffix = str(header["suffix"])
    layout = decode_layout(header.get("layout"))
    state = deserialize_state_dict(memoryview(data), suffix, name, int(header["memory_bytes"]))  # type: ignore[call-overload]
    tensors = conform_to_architecture(state, layout, arch, name)
    del state
    located: dict[str, tuple[int, int]] = {}
    if header.get("reply") == "offsets":
        located = locate_tensors(data, suffix, tensors, max_compared=4 * len(data))
    del data
    rest = {key: tensor for key, tensor in tensors.items() if key not in located}
    reply: dict[str, object] = {"ok": True}
    if located:
        reply["located"] = [[key, offset, length] for key, (offset, length) in located.items()]
    return reply, bytes(save(rest)) if rest else b""


def serve(requests: BinaryIO, replies: BinaryIO) -> int:
    from .checkpoints import is_allocation_failure
    from .errors import CkptEvalError
    from .text import printable

    write_frame(replies, {"ready": True, "pid": os.getpid()})
    while True:
        header = read_frame(requests, MAX_REQUEST_HEADER_BYTES)
        if header is None:
            return 0
        size = int(header["size"])  # type: ignore[call-overload]
        try:
            _limit(float(header["cpu_seconds"]), int(header["memory_bytes"]))  # type: ignore[arg-type, call-overload]
            data = _read_exact(requests, size)
            verdict = read_frame(requests)
            if verdict is None:
                return 0
            if not verdict.get("proceed"):
                del data
                write_frame(replies, {"ok": False, "kind": "cancelled", "error": "cancelled by the worker"})
                continue
            reply, payload = _parse(header, data)
            del data
            write_frame(replies, reply, payload)
        except EOFError:
            return 0
        except CkptEvalError as exc:
            write_frame(replies, {"ok": False, "kind": "refused", "error": str(exc)})
        except MemoryError:
            write_frame(replies, {"ok": False, "kind": "memory", "error": "ran out of its memory budget"})
            return 0  # the heap may be fragmented past use: let the worker start a fresh parser
        except RecursionError:
            write_frame(replies, {"ok": False, "kind": "refused", "error": "structure nested too deeply"})
        except Exception as exc:  # a library failing on hostile bytes: refuse the checkpoint, keep serving
            text = f"{exc.__class__.__name__}: {printable(' '.join(str(exc).split()), 300)}"
            if is_allocation_failure(exc):
                write_frame(replies, {"ok": False, "kind": "memory", "error": f"ran out of its memory budget ({text})"})
                return 0
            traceback.print_exc(file=sys.stderr)
            write_frame(replies, {"ok": False, "kind": "refused", "error": f"parser error {text}"})
        finally:
            _unlimit()


def main() -> int:
    parent = int(os.environ.get("CKPT_EVAL_PARSER_PARENT", "0")) or os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    _die_with_parent(parent)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # The protocol owns stdout: anything a library prints goes to stderr (which the worker escapes).
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    import torch

    torch.set_num_threads(1)
    # Each request allocates and frees buffers of the checkpoint's size; kept for the next request
    # instead of being unmapped and faulted in again (a third of the parse time for a 3 MB file).
    # Bounded: blocks above 64 MiB are still mapped and returned, as is a free heap top above it.
    retain_freed_memory(PARSER_RETAIN_BYTES)
    import safetensors.torch  # noqa: F401 (import before the first request, not inside its budget)

    from . import checkpoints  # noqa: F401 (no architectures: the layout comes with each request)

    return serve(requests, replies)


def exit_now(code: int) -> None:
    """End the process without tearing down the interpreter: nothing is left to clean up, and with
    torch imported the teardown alone takes about 0.4 s, which the worker would wait for."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
