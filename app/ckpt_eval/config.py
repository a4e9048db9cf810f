"""Runtime settings of a job, gathered by the CLI from flags and CKPT_EVAL_* variables."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .db.connection import RetryPolicy
from .errors import ConfigError
from .isolation import ParseLimits

DEFAULT_CREDENTIALS = "db.credentials"
DEFAULT_CHECKPOINT_ROOT = "checkpoints"
DEFAULT_DATA_DIR = "data"
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_BATCH_SIZE = 512
DEFAULT_GROUP_SIZE = 8
# Model tensors a group holds loaded at once; past it, the models loaded so far make their pass first.
DEFAULT_GROUP_MEMORY_BYTES = 512 * 1024 * 1024
CLAIM_BATCH = 50


@dataclass(frozen=True)
class Worker:
    """Who is evaluating: recorded with every run, and the lease owner in the registry."""

    host: str
    pid: int
    instance: str

    @classmethod
    def current(cls) -> Worker:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8])

    @property
    def owner(self) -> str:
        return f"{self.host}:{self.pid}:{self.instance}"


@dataclass(frozen=True)
class Settings:
    credentials_path: Path = Path(DEFAULT_CREDENTIALS)
    vault_password_file: str | None = None
    checkpoint_root: Path = Path(DEFAULT_CHECKPOINT_ROOT)
    data_dir: Path | None = Path(DEFAULT_DATA_DIR)
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    batch_size: int = DEFAULT_BATCH_SIZE
    group_size: int = DEFAULT_GROUP_SIZE
    group_memory_bytes: int = DEFAULT_GROUP_MEMORY_BYTES
    torch_threads: int = 0  # 0: PyTorch's default (one per core); set when the first model runs
    statement_timeout_ms: int = 60_000
    lock_timeout_ms: int = 30_000
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    parse_limits: ParseLimits = field(default_factory=ParseLimits)

    def __post_init__(self) -> None:
        if self.lease_seconds < 2:
            raise ConfigError("lease must be at least 2 seconds")
        if self.batch_size < 1:
            raise ConfigError("batch size must be positive")
        if self.group_size < 1:
            raise ConfigError("group size must be positive")
        if self.retry.attempts < 1:
            raise ConfigError("database retries must be at least 1")

    @property
    def heartbeat_seconds(self) -> float:
        # Three heartbeats per lease: one lost heartbeat never costs the lease.
        return self.lease_seconds / 3

    def connect_options(self) -> dict[str, int]:
        return {"statement_timeout_ms": self.statement_timeout_ms, "lock_timeout_ms": self.lock_timeout_ms}
