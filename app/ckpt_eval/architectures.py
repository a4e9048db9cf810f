"""The architecture registry: what a checkpoint's ``arch`` names, and how its inputs are prepared.

Architectures come from installed Python packages only, through the entry-point group
``ckpt_eval.architectures``: each entry point is named after the architecture and names an
``ArchitectureSpec`` (``module:attribute``). ckpt-eval publishes its own built-ins the same way
(pyproject.toml). A value in the database or in a checkpoint can only *select* one of them by
name; it never supplies code.

Entry points are discovered once (package metadata only, nothing imported); a plugin module is
imported the first time its architecture is asked for, and the result is cached, good or bad.
A plugin that fails to import, publishes something that is not a valid spec, or shares its name
with another package's is recorded as broken with the reason: asking for it raises
``ArchitectureError`` (one checkpoint's failed run), and ``installed()`` lists it with the reason.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError
from .text import printable, quoted

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ckpt_eval.architectures"
SUPPORTED_DTYPES = ("float32",)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
MAX_REASON_LENGTH = 300


class ArchitectureError(CheckpointError):
    """An architecture that is not installed, or whose plugin failed to load or to build (exit 65)."""


@dataclass(frozen=True)
class InputSpec:
    """One sample's input: its shape, dtype and preparation ((x - mean) / std after the dataset's own scaling)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0

    @property
    def is_identity(self) -> bool:
        return self.mean == 0.0 and self.std == 1.0


@dataclass(frozen=True)
class ArchitectureSpec:
    """What a plugin publishes under the ``ckpt_eval.architectures`` entry-point group."""

    name: str
    build: Callable[[], nn.Module]
    input: InputSpec
    num_classes: int
    class_names: tuple[str, ...] | None = None
    description: str = ""


@dataclass(frozen=True)
class Architecture:
    """An installed architecture: its spec and the package (and version) that provided it."""

    spec: ArchitectureSpec
    package: str
    version: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.spec.input.shape

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.spec.class_names

    def prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        """(inputs - mean) / std per feature or channel; the inputs themselves when that is the identity."""
        import torch

        if self.spec.input.is_identity:
            return inputs
        mean = torch.as_tensor(self.spec.input.mean, dtype=inputs.dtype)
        std = torch.as_tensor(self.spec.input.std, dtype=inputs.dtype)
        if mean.ndim == 1 and inputs.ndim > 2:  # per channel of an image batch (N, C, H, W)
            shape = (1, -1) + (1,) * (inputs.ndim - 2)
            mean, std = mean.reshape(shape), std.reshape(shape)
        return (inputs - mean) / std


@dataclass(frozen=True)
class ArchitectureInfo:
    """One published entry point, loaded or not: what ``ckpt-eval architectures`` shows."""

    name: str
    package: str
    version: str
    target: str  # the entry point's value, "module:attribute"
    architecture: Architecture | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.architecture is not None

    @property
    def status(self) -> str:
        return "ok" if self.ok else f"broken: {self.error}"

    def as_dict(self) -> dict[str, Any]:
        spec = self.architecture.spec if self.architecture is not None else None
        return {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "entry_point": self.target,
            "input_shape": list(spec.input.shape) if spec else None,
            "input_dtype": spec.input.dtype if spec else None,
            "standardised": (not spec.input.is_identity) if spec else None,
            "num_classes": spec.num_classes if spec else None,
            "class_names": list(spec.class_names) if spec and spec.class_names is not None else None,
            "description": spec.description if spec else None,
            "status": "ok" if self.ok else "broken",
            "error": self.error,
        }


# --------------------------------------------------------------------------- validation (pure)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_scaling(label: str, value: object, count: int, *, positive: bool) -> list[str]:
    values: tuple[object, ...]
    if _is_real(value):
        values = (value,)
    elif isinstance(value, tuple):
        if len(value) != count:
            return [f"input.{label} has {len(value)} values, the input has {count} features or channels"]
        values = value
    else:
        return [f"input.{label} must be a number or a tuple of numbers, not {type(value).__name__}"]
    if not all(_is_real(item) for item in values):
        return [f"input.{label} must hold numbers only"]
    if not all(math.isfinite(float(item)) for item in values):  # type: ignore[arg-type]
        return [f"input.{label} must be finite"]
    if positive and not all(float(item) > 0 for item in values):  # type: ignore[arg-type]
        return [f"input.{label} must be greater than 0"]
    return []


def spec_problems(spec: object, published_name: str) -> list[str]:
    """Everything wrong with what an entry point published; empty when it is a usable spec."""
    if not isinstance(spec, ArchitectureSpec):
        return [f"it published a {type(spec).__name__}, not a ckpt_eval.architectures.ArchitectureSpec"]
    problems: list[str] = []
    if not isinstance(spec.name, str) or spec.name != published_name:
        problems.append(f"its spec is named {quoted(spec.name, 60)}, the entry point {quoted(published_name, 60)}")
    elif not NAME_PATTERN.fullmatch(spec.name):
        problems.append("the name must be 1 to 100 letters, digits, '_', '.' or '-', starting with a letter or digit")
    if not callable(spec.build):
        problems.append("build is not callable")
    if not _is_int(spec.num_classes) or spec.num_classes < 2:
        problems.append(f"num_classes must be an integer of at least 2, not {printable(repr(spec.num_classes), 40)}")
    if spec.class_names is not None:
        names = spec.class_names
        if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
            problems.append("class_names must be a tuple of non-empty strings")
        elif len(set(names)) != len(names):
            problems.append("class_names must be distinct")
        elif _is_int(spec.num_classes) and len(names) != spec.num_classes:
            problems.append(f"{len(names)} class_names for {printable(spec.num_classes)} classes")
    if not isinstance(spec.description, str):
        problems.append("description must be a string")
    problems += _input_problems(spec.input)
    return problems


def _input_problems(spec: object) -> list[str]:
    if not isinstance(spec, InputSpec):
        return [f"input must be a ckpt_eval.architectures.InputSpec, not {type(spec).__name__}"]
    problems: list[str] = []
    if spec.dtype not in SUPPORTED_DTYPES:
        problems.append(
            f"input dtype {quoted(spec.dtype, 20)} is not supported (supported: {', '.join(SUPPORTED_DTYPES)})"
        )
    shape = spec.shape
    if not isinstance(shape, tuple) or not shape or not all(_is_int(n) and n > 0 for n in shape):
        problems.append(f"input shape must be a non-empty tuple of positive integers, not {printable(shape, 60)}")
        return problems
    # One mean/std per feature (shape (F,)) or per channel (shape (C, ...)): the first dimension.
    problems += _check_scaling("mean", spec.mean, shape[0], positive=False)
    problems += _check_scaling("std", spec.std, shape[0], positive=True)
    return problems


def describe_exception(exc: BaseException) -> str:
    """An exception from plugin code as one escaped, bounded line: its class and message."""
    message = " ".join(str(exc).split())
    text = f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__
    return printable(text, MAX_REASON_LENGTH)


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class _Published:
    entry_point: metadata.EntryPoint
    package: str
    version: str

    @property
    def label(self) -> str:
        return f"{printable(self.package, 80)} {printable(self.version, 40)}"


_lock = threading.RLock()
_published_cache: dict[str, tuple[_Published, ...]] | None = None
_loaded: dict[str, ArchitectureInfo] = {}


def _normalised(package: str) -> str:
    return re.sub(r"[-_.]+", "-", package).lower()


def _discover() -> dict[str, tuple[_Published, ...]]:
    found: dict[str, list[_Published]] = {}
    seen: set[str] = set()
    for dist in metadata.distributions():
        try:
            # The same package found twice on sys.path: the first one is what Python imports. Its
            # name is read from the folder's name where it can be (parsing every package's METADATA
            # costs more than the rest of the discovery together).
            key = getattr(dist, "_normalized_name", None) or _normalised(str(dist.metadata["Name"] or ""))
            if key and _normalised(key) in seen:
                continue
            seen.add(_normalised(key))
            entry_points = list(dist.entry_points.select(group=ENTRY_POINT_GROUP))
            if not entry_points:
                continue
            package = str(dist.metadata["Name"] or "")
            version = str(dist.version)
        except Exception as exc:  # one unreadable package (bad encoding, ...) must not hide the others
            log.warning("skipping an installed package whose metadata cannot be read: %s", describe_exception(exc))
            continue
        for entry_point in entry_points:
            found.setdefault(entry_point.name, []).append(_Published(entry_point, package or "unknown", version))
    return {name: tuple(items) for name, items in found.items()}


def _published() -> dict[str, tuple[_Published, ...]]:
    """Every entry point of the group by name (package metadata only: nothing is imported here)."""
    global _published_cache
    with _lock:
        if _published_cache is None:
            _published_cache = _discover()
        return _published_cache


def refresh() -> None:
    """Forget what was discovered and loaded (after packages were installed into a running process)."""
    global _published_cache
    with _lock:
        _published_cache = None
        _loaded.clear()
        _state_spec.cache_clear()
        importlib.invalidate_caches()


def _load(published: _Published) -> ArchitectureInfo:
    entry_point = published.entry_point
    base = {"name": entry_point.name, "package": published.package, "version": published.version}
    try:
        # The protocol of `--format json` owns stdout: whatever a plugin prints on import goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            value = entry_point.load()
    except (Exception, SystemExit) as exc:  # any failure of plugin code is that plugin's, not ours
        return ArchitectureInfo(**base, target=entry_point.value, error=f"import failed: {describe_exception(exc)}")
    problems = spec_problems(value, entry_point.name)
    if problems:
        reason = printable("invalid spec: " + "; ".join(problems), MAX_REASON_LENGTH)
        return ArchitectureInfo(**base, target=entry_point.value, error=reason)
    architecture = Architecture(value, published.package, published.version)
    return ArchitectureInfo(**base, target=entry_point.value, architecture=architecture)


def _info(name: str) -> list[ArchitectureInfo]:
    """The loaded entries published under ``name`` (more than one: all broken, the name is ambiguous)."""
    publishers = _published().get(name, ())
    with _lock:
        if name not in _loaded and publishers:
            if len(publishers) == 1:
                _loaded[name] = _load(publishers[0])
            else:
                labels = ", ".join(p.label for p in publishers)
                _loaded[name] = ArchitectureInfo(
                    name, "", "", "", error=f"published by more than one package ({labels}); uninstall all but one"
                )
        loaded = _loaded.get(name)
    if loaded is None:
        return []
    if len(publishers) == 1:
        return [loaded]
    return [ArchitectureInfo(name, p.package, p.version, p.entry_point.value, error=loaded.error) for p in publishers]


def installed() -> list[ArchitectureInfo]:
    """Every published architecture, broken ones with their reason, by name then package."""
    entries = [info for name in _published() for info in _info(name)]
    return sorted(entries, key=lambda info: (info.name, info.package))


def get_architecture(name: str) -> Architecture:
    """The installed architecture called ``name``; ArchitectureError when it is unknown or broken."""
    publishers = _published().get(name, ()) if isinstance(name, str) else ()
    if not publishers:
        known = ", ".join(printable(n, 100) for n in sorted(_published())) or "none"
        raise ArchitectureError(f"unknown architecture {quoted(name, 60)} (installed: {known})")
    entries = _info(name)
    if len(entries) > 1:
        raise ArchitectureError(f"architecture {quoted(name, 60)} is {entries[0].error}")
    entry = entries[0]
    if entry.architecture is None:
        raise ArchitectureError(
            f"architecture {quoted(name, 60)} from package {publishers[0].label} failed to load: {entry.error}"
        )
    return entry.architecture


def _build(architecture: Architecture) -> nn.Module:
    """The plugin's build(), its failures turned into the architecture's error (one run fails, not the job)."""
    from torch import nn

    label = f"architecture {quoted(architecture.name, 60)} from package {printable(architecture.package, 80)} "
    label += printable(architecture.version, 40)
    try:
        module = architecture.spec.build()
    except (Exception, SystemExit) as exc:
        raise ArchitectureError(f"{label} failed to build its module: {describe_exception(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ArchitectureError(f"{label}: build() returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def build_model(name: str) -> nn.Module:
    """A fresh module of the architecture, randomly initialised (training, or loading weights into)."""
    return _build(get_architecture(name))


def build_model_without_memory(name: str) -> nn.Module:
    """The module built on the meta device (no memory, no initialisation); a plain build if that fails."""
    import torch

    architecture = get_architecture(name)
    try:
        with torch.device("meta"):
            return _build(architecture)
    except ArchitectureError:
        # Some modules cannot be built on the meta device (numpy-initialised buffers, ...): a real
        # build then either works or names the plugin's error.
        return _build(architecture)


def state_spec(name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The architecture's state-dict layout (key -> shape, dtype): what a checkpoint must hold exactly."""
    get_architecture(name)  # unknown or broken: its own error, never cached
    return dict(_state_spec(name))


@lru_cache(maxsize=64)
def _state_spec(name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    model = build_model_without_memory(name)
    layout = {key: (tuple(value.shape), value.dtype) for key, value in model.state_dict().items()}
    if not layout:
        raise ArchitectureError(f"architecture {quoted(name, 60)} has no parameters or buffers to load")
    return layout
