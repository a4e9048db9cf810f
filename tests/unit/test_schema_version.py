"""The schema version the application needs is the one init.sql declares and records."""

from __future__ import annotations

import re
from pathlib import Path

from ckpt_eval.db import sql

INIT_SQL = (Path(__file__).resolve().parents[2] / "init.sql").read_text()


def test_the_header_version_is_the_version_the_application_requires() -> None:
    header = re.search(r"ckpt-eval schema version: (\d+)", INIT_SQL)
    assert header is not None
    assert int(header.group(1)) == sql.REQUIRED_SCHEMA_VERSION


def test_init_sql_records_every_version_up_to_the_required_one() -> None:
    recorded = {
        int(v) for v in re.findall(r"INSERT INTO ckpt_eval\.schema_version \(version\)\s+SELECT (\d+)", INIT_SQL)
    }
    assert recorded == set(range(1, sql.REQUIRED_SCHEMA_VERSION + 1))
