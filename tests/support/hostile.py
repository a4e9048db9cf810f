"""Hostile checkpoint files, built byte by byte: each one attacks the parser a different way."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
import zlib

import torch


def _put(index: int) -> bytes:
    return pickle.BINPUT + bytes([index]) if index < 256 else pickle.LONG_BINPUT + struct.pack("<I", index)


def _get(index: int) -> bytes:
    return pickle.BINGET + bytes([index]) if index < 256 else pickle.LONG_BINGET + struct.pack("<I", index)


def hash_bomb_pickle(depth: int = 100) -> bytes:
    """A dict whose key is a tuple DAG of ``depth`` levels built through the memo: hashing it takes 2**depth steps."""
    out = bytearray(pickle.PROTO + b"\x02")
    out += pickle.EMPTY_DICT + _put(0)
    out += pickle.EMPTY_TUPLE + _put(1)
    for level in range(1, depth + 1):  # the tuple on the stack and its memo copy become the next level
        out += _get(level) + pickle.TUPLE2 + _put(level + 1)
    out += pickle.BININT1 + b"\x01" + pickle.SETITEM + pickle.STOP
    return bytes(out)


def deep_nesting_pickle(depth: int = 200_000) -> bytes:
    """Lists nested ``depth`` deep: naive recursive code (repr, hash, comparison) overflows the C stack."""
    out = bytearray(pickle.PROTO + b"\x02")
    out += (pickle.EMPTY_LIST + pickle.MARK) * depth
    out += (pickle.APPENDS) * depth
    out += pickle.STOP
    return bytes(out)


def _torch_archive(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def zip_bomb_checkpoint(expanded_bytes: int = 3 * 1024**3, arch_state: dict[str, torch.Tensor] | None = None) -> bytes:
    """A torch archive plus one DEFLATE record that expands to ``expanded_bytes`` (a few MB on disk)."""
    base = _torch_archive(arch_state or {"w": torch.zeros(2)})
    with zipfile.ZipFile(io.BytesIO(base)) as source:
        records = [(info, source.read(info.filename)) for info in source.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as target:
        for info, data in records:
            target.writestr(info, data)
        prefix = records[0][0].filename.split("/")[0]
        bomb = zipfile.ZipInfo(f"{prefix}/data/9999")
        bomb.compress_type = zipfile.ZIP_DEFLATED
        with target.open(bomb, "w", force_zip64=True) as stream:
            block = bytes(1 << 20)
            for _ in range(expanded_bytes // len(block)):
                stream.write(block)
    return out.getvalue()


def oversized_stored_record(declared_bytes: int) -> bytes:
    """A torch archive whose stored record claims ``declared_bytes`` in its directory but holds little."""
    base = bytearray(_torch_archive({"w": torch.zeros(2)}))
    # Patch the central directory's uncompressed size of the last record (zip64-free archives only).
    index = base.rfind(b"PK\x01\x02")
    struct.pack_into("<I", base, index + 24, min(declared_bytes, 0xFFFFFFFE))
    return bytes(base)


def compressed_record_checkpoint(state: dict[str, torch.Tensor]) -> bytes:
    """A real checkpoint re-packed with DEFLATE: loadable by zip readers, never written by torch.save."""
    base = _torch_archive(state)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def safetensors_with_dtype(dtype: str, name: str = "layers.1.weight", shape: tuple[int, ...] = (2,)) -> bytes:
    """A well-formed safetensors file whose tensor has ``dtype`` (one torch may not know)."""
    count = 1
    for dim in shape:
        count *= dim
    header = json.dumps({name: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, count]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(count)


def huge_storage_pickle_checkpoint(numel: int) -> bytes:
    """A torch archive whose pickle asks for a storage of ``numel`` floats that the archive cannot back."""
    base = bytearray(_torch_archive({"w": torch.zeros(3)}))
    return bytes(base).replace(b"\x4b\x03", struct.pack("<BI", 0x4A, numel)[:1] + struct.pack("<i", numel), 1)


def crc_fixed(data: bytes) -> int:
    return zlib.crc32(data)


def torch_archive_with_pickle(pickled: bytes) -> bytes:
    """A torch.save archive whose data.pkl is replaced by ``pickled`` (records stored, as torch writes them)."""
    base = _torch_archive({"w": torch.zeros(2)})
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = pickled if info.filename.endswith("/data.pkl") else source.read(info.filename)
            target.writestr(info.filename, data)
    return out.getvalue()


def safetensors_header_length(claimed: int) -> bytes:
    """A safetensors file whose 8-byte header length claims ``claimed`` bytes of JSON."""
    return struct.pack("<Q", claimed) + b'{"a":' + bytes(64)


def safetensors_overlapping_offsets() -> bytes:
    """Two tensors whose byte ranges overlap (a reader must not alias or over-read)."""
    header = json.dumps(
        {
            "layers.1.weight": {"dtype": "F32", "shape": [32, 64], "data_offsets": [0, 8192]},
            "layers.1.bias": {"dtype": "F32", "shape": [32], "data_offsets": [64, 192]},
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(8192)


def pickle_with_global(module: str, name: str) -> bytes:
    """A protocol-4 pickle calling ``module.name()`` through STACK_GLOBAL (any text, control characters too)."""
    out = bytearray(pickle.PROTO + b"\x04")
    for text in (module, name):
        encoded = text.encode("utf-8", "surrogatepass")
        out += pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded
    out += pickle.STACK_GLOBAL + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP
    return bytes(out)


class _CodeExecution:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (self.command,))


def code_execution_pickle(marker: object) -> bytes:
    """The classic payload: unpickling it runs ``touch marker``."""
    return pickle.dumps(_CodeExecution(f"touch {marker}"))
