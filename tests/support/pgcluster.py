"""A throwaway PostgreSQL cluster: initdb + pg_ctl in a temporary directory, on 127.0.0.1 and a free port.

initdb and pg_ctl refuse to run as root, so as root they run as the ``postgres`` user
(or $CKPT_EVAL_PG_USER). The superuser is reached through a Unix socket in the cluster's
own directory (trust, local only); TCP connections use scram-sha-256.

Every statement the server receives is logged (``log_statement = 'all'``: simple queries as
``statement:``, the extended protocol as ``execute <name>:``; bind parameters are not logged). When a
cluster is destroyed its statements are read back from the log (:func:`logged_statements`) and kept in
:data:`RECEIVED`; tests/conftest.py fails the session if any of them is newer than PostgreSQL 9.4
(Greenplum 6's kernel, tests/support/pg94.py). Passwords are set with logging off (:meth:`set_password`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "postgres"
LOG_LINE_PREFIX = "%m [%p] "
# One log entry starts with the prefix; the lines of a multi-line message follow, each after a tab.
_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ \[\d+\] (?P<level>[A-Z]+\d?):  (?P<message>.*)$")
_STATEMENT = re.compile(r"^(?:statement: |execute (?:fetch from )?[^:\s]*: )(?P<sql>.*)$", re.DOTALL)
RECEIVED: list[tuple[str, str]] = []  # (cluster directory, statement) of every destroyed cluster

PREREQUISITES = "scripts/os-prerequisites installs what the tests need"


class MissingTool(RuntimeError):
    """A program or user the throwaway cluster needs is not on this machine."""


def run_tool(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """subprocess.run, except that a program that is not installed is a MissingTool naming it."""
    try:
        return subprocess.run(argv, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError as exc:
        raise MissingTool(f"{argv[0]} not found: {PREREQUISITES} (Debian: util-linux, postgresql)") from exc


def find_bindir() -> Path:
    explicit = os.environ.get("CKPT_EVAL_PG_BINDIR")
    if explicit:
        return Path(explicit)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if candidates:
        return Path(candidates[-1])
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise MissingTool(f"PostgreSQL server binaries (initdb) not found: {PREREQUISITES} (Debian: postgresql)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PsqlError(RuntimeError):
    def __init__(self, returncode: int, stderr: str) -> None:
        super().__init__(f"psql exited {returncode}: {stderr}")
        self.returncode = returncode
        self.stderr = stderr


class PgCluster:
    def __init__(self, base: Path | None = None, port: int | None = None, log_statements: bool = True) -> None:
        self.log_statements = log_statements  # False only to measure what logging costs (bench/)
        self.bindir = find_bindir()
        self.port = port or free_port()
        self.owner = os.environ.get("CKPT_EVAL_PG_USER", "postgres") if os.geteuid() == 0 else None
        for tool in ("initdb", "pg_ctl", "psql"):
            if not (self.bindir / tool).is_file():
                raise MissingTool(f"{self.bindir / tool} not found: {PREREQUISITES} (Debian: postgresql)")
        if self.owner and not shutil.which("runuser"):
            raise MissingTool(f"runuser not found (root runs initdb through it): {PREREQUISITES} (Debian: util-linux)")
        self.base = Path(tempfile.mkdtemp(prefix="ckpt-eval-pg-", dir=base))
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.logfile = self.base / "server.log"
        self.sockdir.mkdir()
        if self.owner:
            try:
                entry = pwd.getpwnam(self.owner)
            except KeyError:
                shutil.rmtree(self.base, ignore_errors=True)
                raise MissingTool(
                    f"as root, initdb and pg_ctl run as the user {self.owner!r}, which does not exist: {PREREQUISITES}"
                    " (or set CKPT_EVAL_PG_USER)"
                ) from None
            for path in (self.base, self.sockdir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(self.base, 0o755)  # noqa: S103 (the postgres user must traverse it)

    # -- running server tools as the cluster owner -------------------------------------------
    def _as_owner(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if self.owner:
            argv = ["runuser", "-u", self.owner, "--", *argv]
        return run_tool(argv, check=True, **kwargs)

    def init(self) -> None:
        self._as_owner(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.sockdir}'\nfsync = off\n"
                "max_connections = 60\nshared_buffers = 32MB\n"
                f"log_statement = '{'all' if self.log_statements else 'none'}'\nlog_parameter_max_length = 0\n"
                f"log_line_prefix = '{LOG_LINE_PREFIX}'\n"
            )

    def write_hba(self, lines: list[str]) -> None:
        """Replace pg_hba.conf; the superuser keeps its local trust line."""
        content = "local all postgres trust\n" + "".join(line + "\n" for line in lines)
        (self.datadir / "pg_hba.conf").write_text(content)
        if self.is_running():
            self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "reload"])

    def start(self) -> None:
        self._as_owner(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "start"]
        )

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"])

    def is_running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        with contextlib.suppress(OSError):
            RECEIVED.extend((self.base.name, statement) for statement in logged_statements(self.logfile))
        shutil.rmtree(self.base, ignore_errors=True)

    def set_password(self, role: str, password: str, dbname: str = "postgres") -> None:
        """ALTER ROLE ... PASSWORD with statement logging off for it (the log must hold no secret)."""
        escaped = password.replace("'", "''")
        self.psql(
            "SET log_statement = 'none';\nSET log_min_error_statement = 'panic';\n"
            f"ALTER ROLE {role} PASSWORD '{escaped}';",
            dbname=dbname,
        )

    # -- superuser SQL -------------------------------------------------------------------------
    def psql(self, sql: str | None = None, dbname: str = "postgres", file: Path | None = None) -> str:
        argv = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.sockdir),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            dbname,
        ]
        # SQL goes through stdin, never argv, so a password in it is not visible in /proc.
        argv += ["-f", str(file) if file else "-"]
        result = run_tool(argv, input=None if file else sql, check=False)
        if result.returncode != 0:
            raise PsqlError(result.returncode, result.stderr.strip())
        return result.stdout.strip()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.psql("SELECT 1")
                return
            except PsqlError:
                time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not come up; see {self.logfile}")


def create_app_database(cluster: PgCluster, init_sql: Path, app_password: str, dbname: str = "ckpt_eval") -> None:
    """Create the database, apply init.sql as the superuser, and give ckpt_eval_app its password."""
    cluster.psql(f"CREATE DATABASE {dbname}")
    cluster.psql(dbname=dbname, file=init_sql)
    cluster.set_password("ckpt_eval_app", app_password, dbname=dbname)


def logged_statements(logfile: Path) -> list[str]:
    """The statements a server logged (``statement:``/``execute <name>:`` entries, multi-line ones whole)."""
    entries: list[tuple[str, list[str]]] = []
    for line in logfile.read_text(errors="replace").splitlines():
        match = _ENTRY.match(line)
        if match:
            entries.append((match["level"], [match["message"]]))
        elif entries:  # a continuation line of the entry above
            entries[-1][1].append(line[1:] if line.startswith("\t") else line)
    statements = []
    for level, lines in entries:
        found = _STATEMENT.match("\n".join(lines)) if level == "LOG" else None
        if found:
            statements.append(found["sql"])
    return statements
