"""The only module that touches the vault: read the vault password, decrypt db.credentials in memory.

The vault password arrives by file (``--vault-password-file``, ``-`` for stdin,
``CKPT_EVAL_VAULT_PASSWORD_FILE``) or by ``ANSIBLE_VAULT_PASSWORD``, which is removed from
``os.environ`` as soon as the process starts so that no child ever inherits it.
Nothing decrypted is ever written to disk, logged or put in an exception message.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import socket
import stat
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import yaml

from . import redaction
from .errors import AuthenticationError, ConfigError, MissingInputError
from .text import printable

log = logging.getLogger(__name__)

VAULT_HEADER = b"$ANSIBLE_VAULT;"
PASSWORD_ENV = "ANSIBLE_VAULT_PASSWORD"  # noqa: S105 (a variable name, not a secret)
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
REQUIRED_KEYS = ("host", "port", "dbname", "user", "password")
OPTIONAL_KEYS = ("sslmode", "sslrootcert", "connect_timeout")
# Secret sources are bounded: a vault password or a credentials file is small, and a device,
# a FIFO or an endless stdin must fail fast instead of hanging the job or filling its memory.
MAX_PASSWORD_BYTES = 64 * 1024
MAX_CREDENTIALS_BYTES = 1024 * 1024
STDIN_SECONDS = 30.0  # CKPT_EVAL_STDIN_TIMEOUT overrides it
MAX_CONNECT_TIMEOUT = 3600


@dataclass(frozen=True)
class DbCredentials:
    host: str
    port: int
    dbname: str
    user: str
    password: str = field(repr=False)
    sslmode: str | None = None
    sslrootcert: str | None = None
    connect_timeout: int | None = None

    def connect_kwargs(self) -> dict[str, object]:
        """libpq keywords for psycopg.connect; passed as keywords, never as one logged string."""
        kwargs: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "password": self.password,
        }
        if self.sslmode:
            kwargs["sslmode"] = self.sslmode
        if self.sslrootcert:
            kwargs["sslrootcert"] = self.sslrootcert
        if self.connect_timeout is not None:
            kwargs["connect_timeout"] = self.connect_timeout
        return kwargs


def take_password_from_environment() -> bytes | None:
    """Remove ANSIBLE_VAULT_PASSWORD from the environment and return it (called once, at start)."""
    value = os.environb.get(PASSWORD_ENV.encode())
    if value is not None:
        _wipe_initial_environment_value(PASSWORD_ENV.encode())
    os.environb.pop(PASSWORD_ENV.encode(), None)
    os.environ.pop(PASSWORD_ENV, None)
    if value is None:
        return None
    # A pipeline secret often ends with a newline; Ansible strips CR/LF from a password script's output.
    return value.rstrip(b"\r\n")


def _wipe_initial_environment_value(name: bytes) -> None:
    """Overwrite a variable's value in the environment block the process started with.

    Dropping it from os.environ keeps it from children, but /proc/<pid>/environ shows the block the
    process was started with; getenv() still points into that block, so its bytes are zeroed in place.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_void_p
        libc.getenv.argtypes = [ctypes.c_char_p]
        address = libc.getenv(name)
        if address:
            ctypes.memset(address, 0, len(ctypes.string_at(address)))
    except (OSError, AttributeError):  # no C library to ask (not Linux): children are still protected
        log.debug("could not wipe %s from the initial environment", name.decode())


def _strip_password_file(raw: bytes) -> bytes:
    # ansible-core's FileVaultSecret uses .strip(): the same password file must open the vault
    # for ansible-playbook and for ckpt-eval, so we strip exactly as it does.
    return raw.strip()


def read_bounded_file(path: str | Path, limit: int, what: str) -> tuple[bytes, int]:
    """A regular file's bytes (at most ``limit``) and its mode; anything else fails at once.

    Opened non-blocking, so a FIFO with no writer cannot hang the job; a device such as
    /dev/zero is refused by type before a byte is read.
    """
    shown = printable(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MissingInputError(f"{what} {shown} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{what} {shown} is not readable by this user") from None
    except OSError as exc:
        raise ConfigError(f"{what} {shown} cannot be opened: {exc.strerror}") from None
    info = os.fstat(fd)
    problem = None
    if stat.S_ISDIR(info.st_mode):
        problem = "is a directory"
    elif not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file (a device, FIFO or socket); use a file or '-'"
    elif info.st_size > limit:
        problem = f"is larger than {limit} bytes"
    if problem:
        os.close(fd)
        raise ConfigError(f"{what} {shown} {problem}")
    with os.fdopen(fd, "rb") as stream:
        try:
            data = stream.read(limit + 1)
        except OSError as exc:
            raise ConfigError(f"{what} {shown} cannot be read: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {shown} is larger than {limit} bytes")
    return data, info.st_mode


def stdin_seconds() -> float:
    """How long stdin may take to deliver the vault password (CKPT_EVAL_STDIN_TIMEOUT, default 30 s)."""
    raw = os.environ.get("CKPT_EVAL_STDIN_TIMEOUT", "")
    try:
        value = float(raw) if raw else STDIN_SECONDS
    except ValueError:
        raise ConfigError("CKPT_EVAL_STDIN_TIMEOUT must be a number of seconds") from None
    if not 0 < value <= 3600:
        raise ConfigError("CKPT_EVAL_STDIN_TIMEOUT must be between 0 and 3600 seconds")
    return value


def read_bounded_stdin(stream: BinaryIO, limit: int = MAX_PASSWORD_BYTES, seconds: float | None = None) -> bytes:
    """Read stdin to its end, at most ``limit`` bytes and within ``seconds``."""
    seconds = stdin_seconds() if seconds is None else seconds
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream (tests, embedding)
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise ConfigError(f"the vault password on stdin is longer than {limit} bytes") from None
        return data
    if stat.S_ISREG(os.fstat(fd).st_mode):
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise ConfigError(f"the vault password on stdin is longer than {limit} bytes")
        return data
    chunks: list[bytes] = []
    received = 0
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise MissingInputError(
                f"no vault password arrived on stdin within {seconds:g} s (stdin was not closed after it)"
            )
        chunk = os.read(fd, min(65536, limit + 1 - received))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        received += len(chunk)
        if received > limit:
            raise ConfigError(f"the vault password on stdin is longer than {limit} bytes")


def read_password_file(path: str, stdin: BinaryIO | None = None) -> bytes:
    """Read the vault password from a regular file, or from stdin when ``path`` is ``-``."""
    if path == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        return _strip_password_file(read_bounded_stdin(stream))
    raw, mode = read_bounded_file(path, MAX_PASSWORD_BYTES, "vault password file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "vault password file %s is accessible by group or others (mode %o); chmod 600 it",
            printable(path),
            stat.S_IMODE(mode),
        )
    return _strip_password_file(raw)


def resolve_vault_password(
    password_file: str | None,
    environment_password: bytes | None,
    stdin: BinaryIO | None = None,
) -> bytes:
    """Pick the vault password: an explicit file wins over ANSIBLE_VAULT_PASSWORD."""
    if password_file:
        password = read_password_file(password_file, stdin)
        source = "stdin" if password_file == "-" else password_file  # noqa: S105
    elif environment_password is not None:
        password = environment_password
        source = PASSWORD_ENV
    else:
        raise ConfigError(
            "no vault password: pass --vault-password-file PATH (- for stdin), "
            f"or set CKPT_EVAL_VAULT_PASSWORD_FILE or {PASSWORD_ENV}"
        )
    if not password:
        raise AuthenticationError(f"the vault password from {source} is empty")
    redaction.register_secret(password)
    return password


def decrypt_credentials(path: Path, vault_password: bytes) -> DbCredentials:
    """Decrypt an ansible-vault file in memory and validate the mapping inside."""
    vaulttext, _ = read_bounded_file(path, MAX_CREDENTIALS_BYTES, "credentials file")
    if not vaulttext.strip():
        raise ConfigError(f"credentials file {path} is empty")
    vaulttext = vaulttext.strip()
    if not vaulttext.startswith(VAULT_HEADER):
        raise ConfigError(
            f"credentials file {path} is not ansible-vault encrypted; refusing plaintext credentials "
            f"(encrypt it: ansible-vault encrypt {path})"
        )
    plaintext = _vault_decrypt(path, vaulttext, vault_password)
    try:
        data = yaml.safe_load(plaintext)
    except yaml.YAMLError:
        # The YAML error would quote the decrypted text: report only where it is.
        raise ConfigError(f"credentials file {path} does not hold valid YAML once decrypted") from None
    finally:
        del plaintext
    return parse_credentials(data, source=str(path))


@contextlib.contextmanager
def _ansible_contained() -> Iterator[None]:
    """Undo the process-wide patches ansible-core applies on import once the vault work is done.

    Importing ansible replaces ``sys.intern`` and ``socket.getaddrinfo`` with wrapper objects;
    torch's compiler stack refuses a non-function ``sys.intern`` when it is imported later.
    """
    saved = (sys.intern, socket.getaddrinfo)
    try:
        yield
    finally:
        sys.intern, socket.getaddrinfo = saved


def _vault_decrypt(path: Path, vaulttext: bytes, vault_password: bytes) -> bytes:
    with _ansible_contained():
        return _vault_decrypt_contained(path, vaulttext, vault_password)


def _vault_decrypt_contained(path: Path, vaulttext: bytes, vault_password: bytes) -> bytes:
    # Imported here: ansible is heavy and only this module may touch the vault.
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import AnsibleVaultError, AnsibleVaultFormatError
    from ansible_vault import Vault
    from ansible_vault.parsing import AnsibleVaultLib

    vault = Vault(vault_lib=AnsibleVaultLib(vault_password))
    try:
        plaintext = vault.load_raw(vaulttext)
    except AnsibleVaultFormatError:
        raise ConfigError(
            f"credentials file {path} is not a valid ansible-vault file (corrupted or truncated)"
        ) from None
    except AnsibleVaultError as exc:
        if "decryption failed" not in str(exc).lower():  # e.g. a cipher this vault does not know
            raise ConfigError(f"credentials file {path} is not a vault file this tool can read") from None
        raise AuthenticationError(
            f"cannot decrypt {path}: wrong vault password (or the file was tampered with)"
        ) from None
    except AnsibleError:
        raise ConfigError(f"credentials file {path} is not a valid ansible-vault file") from None
    return bytes(plaintext)


def parse_credentials(data: object, source: str) -> DbCredentials:
    """Validate the decrypted mapping. Messages name keys and types, never values."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"credentials in {source} must be a YAML mapping with keys {', '.join(REQUIRED_KEYS)}")
    missing = [key for key in REQUIRED_KEYS if data.get(key) in (None, "")]
    if missing:
        raise ConfigError(f"credentials in {source} lack required key(s): {', '.join(missing)}")
    unknown = sorted(str(key) for key in data if key not in REQUIRED_KEYS + OPTIONAL_KEYS)
    if unknown:
        raise ConfigError(f"credentials in {source} have unknown key(s): {', '.join(unknown)}")
    for key in ("host", "dbname", "user", "password"):
        if not isinstance(data[key], str):
            raise ConfigError(f"credentials in {source}: {key} must be a string")
    redaction.register_secret(data["password"].encode())
    port = _integer(data["port"], "port", source)
    if not 0 < port < 65536:
        raise ConfigError(f"credentials in {source}: port must be between 1 and 65535")
    sslmode = data.get("sslmode")
    if sslmode is not None and sslmode not in SSL_MODES:
        raise ConfigError(f"credentials in {source}: sslmode must be one of {', '.join(SSL_MODES)}")
    sslrootcert = data.get("sslrootcert")
    if sslrootcert is not None and not isinstance(sslrootcert, str):
        raise ConfigError(f"credentials in {source}: sslrootcert must be a path")
    timeout = data.get("connect_timeout")
    connect_timeout = None if timeout is None else _integer(timeout, "connect_timeout", source)
    if connect_timeout is not None and not 0 < connect_timeout <= MAX_CONNECT_TIMEOUT:
        raise ConfigError(f"credentials in {source}: connect_timeout must be between 1 and {MAX_CONNECT_TIMEOUT}")
    return DbCredentials(
        host=data["host"],
        port=port,
        dbname=data["dbname"],
        user=data["user"],
        password=data["password"],
        sslmode=sslmode,
        sslrootcert=sslrootcert,
        connect_timeout=connect_timeout,
    )


def _integer(value: object, key: str, source: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"credentials in {source}: {key} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    raise ConfigError(f"credentials in {source}: {key} must be an integer")


def encrypt_mapping(data: Mapping[str, object], vault_password: bytes) -> str:
    """Encrypt a mapping as an ansible-vault 1.1 AES256 document (used by tests and tooling)."""
    with _ansible_contained():
        from ansible_vault import Vault
        from ansible_vault.parsing import AnsibleVaultLib

        vault = Vault(vault_lib=AnsibleVaultLib(vault_password))
        return str(vault.dump(dict(data)))
