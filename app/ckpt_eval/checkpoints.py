"""Safe checkpoint handling: paths from the database are untrusted input.

A stored path is resolved inside the checkpoint root (no absolute paths, no ``..``, no
symlink that leaves the root), read once into memory, hashed, and the very bytes that were
hashed are deserialised with ``torch.load(weights_only=True)`` or safetensors, so a file
swapped between the check and the load cannot slip through.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from .errors import CheckpointError
from .models import build_model

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
MAX_STORED_PATH_LENGTH = 1024
MAX_CHECKPOINT_BYTES = 2 * 1024**3
STATE_DICT_KEYS = ("state_dict", "model_state_dict")


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    sha256: str
    size: int
    model: nn.Module


def describe(text: str, limit: int = 120) -> str:
    """A printable, bounded rendering of an untrusted string for error messages."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return ascii(shown)


def validate_stored_path(stored: str) -> PurePosixPath:
    """Reject stored paths that could point outside the root before touching the filesystem."""
    if not stored:
        raise CheckpointError("checkpoint path is empty")
    if len(stored) > MAX_STORED_PATH_LENGTH:
        raise CheckpointError(f"checkpoint path is longer than {MAX_STORED_PATH_LENGTH} characters")
    if "\x00" in stored:
        raise CheckpointError(f"checkpoint path {describe(stored)} contains a NUL byte")
    if "\\" in stored:
        raise CheckpointError(f"checkpoint path {describe(stored)} contains a backslash")
    relative = PurePosixPath(stored)
    if relative.is_absolute() or stored.startswith("~"):
        raise CheckpointError(f"checkpoint path {describe(stored)} is absolute; paths are relative to the root")
    if ".." in relative.parts:
        raise CheckpointError(f"checkpoint path {describe(stored)} contains '..'")
    return relative


def resolve_checkpoint_path(root: Path, stored: str) -> Path:
    """Resolve ``stored`` inside ``root``; the result is a regular file whose real path is under the root."""
    relative = validate_stored_path(stored)
    real_root = root.resolve(strict=False)
    if not real_root.is_dir():
        raise CheckpointError(f"checkpoint root {root} is not a directory")
    try:
        real = (real_root / relative).resolve(strict=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {describe(stored)} not found under the checkpoint root") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop on older Pythons
        raise CheckpointError(f"checkpoint {describe(stored)} cannot be resolved: {exc.__class__.__name__}") from None
    if not real.is_relative_to(real_root):
        raise CheckpointError(f"checkpoint path {describe(stored)} leaves the checkpoint root (symlink)")
    if not real.is_file():
        raise CheckpointError(f"checkpoint path {describe(stored)} is not a regular file")
    return real


def read_checkpoint_bytes(path: Path, max_bytes: int = MAX_CHECKPOINT_BYTES) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO planted in the root must not hang the worker.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path.name} cannot be opened: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CheckpointError(f"checkpoint {path.name} is not a regular file")
    with os.fdopen(fd, "rb") as stream:
        if info.st_size > max_bytes:
            raise CheckpointError(f"checkpoint {path.name} is larger than {max_bytes} bytes")
        data = stream.read(max_bytes + 1)
    if not data:
        raise CheckpointError(f"checkpoint {path.name} is empty")
    return data


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deserialize_state_dict(data: bytes, suffix: str, name: str) -> dict[str, torch.Tensor]:
    """Turn checkpoint bytes into a state dict without ever running pickled code."""
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            return dict(load_safetensors(data))
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {name} is not a valid safetensors file: {exc}") from None
    if suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"checkpoint {name}: unsupported extension {suffix!r} (use .pt, .pth or .safetensors)")
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's message starts with generic advice; the line naming the refused global says what it was.
        telling = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line]
        first_line = (telling or lines or ["rejected"])[0]
        raise CheckpointError(
            f"checkpoint {name} refused: it is not a plain tensor state dict "
            f"(weights_only load rejected it: {first_line[:200]})"
        ) from None
    except Exception as exc:  # torch's loader fails on junk with many error types; all mean "not a checkpoint"
        raise CheckpointError(
            f"checkpoint {name} is not a readable PyTorch checkpoint ({exc.__class__.__name__})"
        ) from None
    return extract_state_dict(loaded, name)


def extract_state_dict(loaded: object, name: str) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or a dict holding one under ``state_dict``/``model_state_dict``."""
    if isinstance(loaded, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(f"checkpoint {name} does not hold a state dict")
    state: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint {name}: entry {describe(str(key), 60)} is not a named tensor")
        state[key] = value
    return state


def load_into_architecture(state: Mapping[str, torch.Tensor], arch: str, name: str) -> nn.Module:
    model = build_model(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"checkpoint {name} does not fit architecture {arch}: {detail[:500]}") from None
    model.eval()
    return model


def load_checkpoint(root: Path, stored_path: str, arch: str, expected_sha256: str | None) -> LoadedCheckpoint:
    path = resolve_checkpoint_path(root, stored_path)
    data = read_checkpoint_bytes(path)
    digest = sha256_bytes(data)
    if expected_sha256 and digest != expected_sha256.lower():
        raise CheckpointError(
            f"checkpoint {path.name}: sha256 mismatch (registry {expected_sha256[:12]}..., file {digest[:12]}...)"
        )
    state = deserialize_state_dict(data, path.suffix.lower(), path.name)
    model = load_into_architecture(state, arch, path.name)
    return LoadedCheckpoint(path, digest, len(data), model)
