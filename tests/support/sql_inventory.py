"""Every SQL statement of the repository, found without running anything.

- app: the constants of ``ckpt_eval.db.sql`` (as Python evaluates them, f-strings included), and any
  other string in ``app/`` that starts with an upper-case SQL keyword;
- init.sql: split into statements (semicolons outside literals, comments and dollar quotes);
- roles and playbooks: ``query:`` of the postgresql modules, ``-c``/``--command`` of psql commands, and
  settings given through ``PGOPTIONS`` (as ``SET name = value``); ``*.sql``/``*.sql.j2`` templates;
- docker/db-init scripts and scripts/: the double-quoted SQL lines / Python strings;
- tests: the statements of ``tests/**/*.sql``, and every string constant in ``tests/**/*.py``
  (f-strings with ``x`` for each replacement field) that starts with an upper-case SQL keyword,
  docstrings excepted. The tests of the checker itself (their catalogues of forbidden statements)
  are left out on purpose (CHECKER_TESTS).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.pg94 import looks_like_sql, split_statements

REPO = Path(__file__).resolve().parents[2]
CHECKER_TESTS = (
    "tests/unit/test_sql_portability.py",
    "tests/support/pg94.py",
    "tests/integration/test_statement_log.py",
)


@dataclass(frozen=True)
class Statement:
    origin: str  # "path:line" (or "path#NAME" for a constant)
    text: str


def app_statements() -> list[Statement]:
    from ckpt_eval.db import sql

    found = [
        Statement(f"app/ckpt_eval/db/sql.py#{name}", value)
        for name, value in vars(sql).items()
        if name.isupper() and isinstance(value, str)
    ]
    for path in sorted((REPO / "app").rglob("*.py")):
        if path.name == "sql.py" and path.parent.name == "db":
            continue  # its constants are taken whole above (its f-string fragments are not statements)
        found += python_statements(path)
    return found


def init_sql_statements(path: Path | None = None) -> list[Statement]:
    path = path or REPO / "init.sql"
    text = path.read_text()
    statements = []
    offset = 0
    for statement in split_statements(text):
        offset = text.find(statement, offset)
        statements.append(Statement(f"{_rel(path)}:{text.count(chr(10), 0, offset) + 1}", statement))
        offset += len(statement)
    return statements


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else path.as_posix()


# ------------------------------------------------------------------------------------------ Ansible


def ansible_statements() -> list[Statement]:
    found: list[Statement] = []
    files = sorted([*(REPO / "roles").rglob("*.yml"), *(REPO / "playbooks").glob("*.yml")])
    for path in files:
        document = yaml.safe_load(path.read_text())
        for task in _tasks(document):
            found += [Statement(f"{_rel(path)}: {task.get('name', '?')}", text) for text in _task_sql(task)]
    for path in sorted((REPO / "roles").rglob("*.sql*")):
        found += [Statement(f"{_rel(path)}", s) for s in split_statements(path.read_text())]
    return found


def _tasks(node: object) -> Iterator[dict[str, object]]:
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        if "name" in node or any("." in str(key) for key in node):
            yield node
        for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
            if key in node:
                yield from _tasks(node[key])


def _task_sql(task: dict[str, object]) -> list[str]:
    found: list[str] = []
    for module, args in task.items():
        module = str(module)
        if not isinstance(args, dict | str | list):
            continue
        if (
            module.endswith(("postgresql_query", "postgresql_script"))
            and isinstance(args, dict)
            and isinstance(args.get("query"), str)
        ):
            found.append(args["query"])
        if module.endswith(("command", "shell")):
            argv = args.get("argv") if isinstance(args, dict) else None
            command = args.get("cmd", "") if isinstance(args, dict) else args
            words = [str(w) for w in argv] if isinstance(argv, list) else str(command).split()
            if any(word.endswith("psql") for word in words):
                found += [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-c", "--command")]
        if module == "environment" and isinstance(args, dict):
            options = str(args.get("PGOPTIONS", ""))
            found += [f"SET {name} = {value}" for name, value in re.findall(r"-c\s*([\w.]+)=(\S+)", options)]
    return found


# ------------------------------------------------------------------------------------------ Python


def python_statements(path: Path) -> list[Statement]:
    """String constants of a Python file that start with an upper-case SQL keyword, docstrings excepted."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant | ast.JoinedStr)
    }
    inside_fstrings = {id(value) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for value in node.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in docstrings or id(node) in inside_fstrings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)  # type: ignore[misc]
        else:
            continue
        if looks_like_sql(text, any_case=False):
            found.append(Statement(f"{_rel(path)}:{node.lineno}", text))
    return found


def test_statements() -> list[Statement]:
    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if _rel(path) not in CHECKER_TESTS:
            found += python_statements(path)
    for path in sorted((REPO / "tests").rglob("*.sql")):  # e.g. an older schema a migration test applies
        found += init_sql_statements(path)
    return found


def script_statements() -> list[Statement]:
    found = []
    for path in sorted((REPO / "scripts").glob("*.py")):
        found += python_statements(path)
    for path in sorted((REPO / "docker").rglob("*.sh")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            quoted = re.findall(r'"([^"]+)"', line)
            found += [Statement(f"{_rel(path)}:{number}", s) for s in quoted if looks_like_sql(s, any_case=False)]
    return found
