"""scripts/os-prerequisites: the one list of what the tests need from the operating system.

`make test` and `.ci/run` run it first. These tests run it with a PATH that lacks some of the programs,
so that it must name the missing packages; they never let it install anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "os-prerequisites"
BASH = shutil.which("bash") or "/bin/bash"


def run(*args: str, path: str | None = None, user: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path if path is not None else os.environ["PATH"], "LANG": "C.UTF-8"}
    argv = [BASH, str(SCRIPT), *args]
    if user:
        # The clone may sit where only root can read it (/root/...): the user runs a copy next to its PATH.
        assert path is not None
        copy = Path(path) / SCRIPT.name
        shutil.copyfile(SCRIPT, copy)
        copy.chmod(0o755)
        argv = [BASH, str(copy), *args]
        argv = [
            shutil.which("runuser") or "/usr/sbin/runuser",
            "-u",
            user,
            "--",
            shutil.which("env") or "/usr/bin/env",
            *(f"{k}={v}" for k, v in env.items()),
            *argv,
        ]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def bare_path() -> Iterator[str]:
    """A PATH with python3, id and runuser only (no make, git, node, npm, apt-get), readable by any user."""
    bindir = Path(tempfile.mkdtemp(prefix="ckpt-eval-bare-path-"))
    try:
        bindir.chmod(0o755)
        # Debian's python3 (any user may run it), else the interpreter behind this venv.
        system = Path("/usr/bin/python3")
        (bindir / "python3").symlink_to(system if system.exists() else os.path.realpath(sys.executable))
        for tool in ("id", "runuser"):
            found = shutil.which(tool) or f"/usr/bin/{tool}"
            if Path(found).exists():
                (bindir / tool).symlink_to(found)
        yield str(bindir)
    finally:
        shutil.rmtree(bindir)


def test_it_lists_what_the_readme_says_the_tests_need() -> None:
    listed = run("--list")
    assert listed.returncode == 0, listed.stderr
    packages = listed.stdout.split()
    assert {"make", "python3-venv", "git", "postgresql", "nodejs", "npm", "python3-psycopg2"} <= set(packages)
    readme = (REPO / "README.md").read_text()
    for package in ("git", "postgresql", "nodejs", "npm"):
        assert f"`{package}`" in readme


def test_nothing_to_do_when_everything_is_present() -> None:
    result = run()
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_check_names_each_missing_package_and_the_line_that_installs_them(bare_path: str) -> None:
    result = run("--check", path=bare_path)
    assert result.returncode == 1
    for package in ("make", "git", "nodejs", "npm"):
        assert f"  {package}: " in result.stderr
    assert "python3-venv:" not in result.stderr
    assert "apt-get update && apt-get install -y --no-install-recommends make git nodejs npm" in result.stderr
    assert "installing" not in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="simulates 'not Debian' as root")
def test_as_root_without_apt_get_it_says_so_instead_of_installing(bare_path: str) -> None:
    result = run(path=bare_path)
    assert result.returncode == 1
    assert "not Debian (no apt-get), so not installing them" in result.stderr
    assert "apt-get install -y --no-install-recommends make git nodejs npm" in result.stderr
    assert "installing" not in result.stdout


def test_not_root_it_names_the_packages_and_does_not_install(bare_path: str) -> None:
    result = run(path=bare_path, user="nobody" if os.geteuid() == 0 else None)
    assert result.returncode == 1
    assert "not root, so not installing them" in result.stderr
    assert "apt-get install -y --no-install-recommends make git nodejs npm" in result.stderr
    # Only root needs runuser: it is not reported missing for an ordinary user.
    assert "util-linux" not in result.stderr
