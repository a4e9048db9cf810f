"""Champions, gates and what reports read: the registry side of `promote`, `gate` and `report`.

Promotion is an INSERT into ckpt_eval.champions, which the app role may do only where the deployment
granted it (greenplum_app_may_promote); elsewhere the schema owner promotes (playbooks/promote.yml).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..errors import DatabasePrivilegeError, UsageError
from ..gates import GateRule, rules_from_json, rules_to_json
from ..text import quoted
from . import sql
from .repository import Repository

PROMOTION_DENIED = (
    "this deployment does not let the app role promote checkpoints: set greenplum_app_may_promote: true "
    "in the inventory, or have the schema owner promote (ansible-playbook playbooks/promote.yml "
    "-e checkpoint=NAME -e dataset=NAME -e reason=...)"
)
HISTORY_LIMIT = 500  # runs in a history figure: the newest ones


class ChampionRepository(Repository):
    # -- champions --------------------------------------------------------------------------------
    def checkpoint_pairs(self, name: str) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.CHECKPOINT_PAIRS, {"name": name}).fetchall()

        return self._with_retry(query, "reading a checkpoint's datasets")

    def promote(self, name: str, dataset: str | None, promoted_by: str, reason: str | None) -> dict[str, Any]:
        """Make checkpoint NAME the champion of DATASET (its only dataset when None). It must have a
        succeeded run there: a champion is what candidates are compared with."""
        pairs = self.checkpoint_pairs(name)
        if not pairs:
            raise UsageError(f"no checkpoint named {quoted(name)} (ckpt-eval status lists them)")
        if dataset is None:
            if len(pairs) > 1:
                listed = ", ".join(quoted(p["dataset"], 60) for p in pairs)
                raise UsageError(f"checkpoint {quoted(name)} is evaluated on several datasets ({listed}): --dataset")
            dataset = str(pairs[0]["dataset"])
        pair = next((p for p in pairs if p["dataset"] == dataset), None)
        if pair is None:
            raise UsageError(f"checkpoint {quoted(name)} is not attached to dataset {quoted(dataset, 60)}")
        if not pair["evaluated"]:
            raise UsageError(
                f"checkpoint {quoted(name)} has no succeeded run on {quoted(dataset, 60)} yet: evaluate it first"
            )
        params = {
            "dataset": dataset,
            "checkpoint_name": name,
            "checkpoint_id": pair["checkpoint_id"],
            "promoted_by": promoted_by,
            "reason": reason,
        }

        def insert(conn: psycopg.Connection) -> dict[str, Any]:
            with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                row = cur.execute(sql.PROMOTE, params).fetchone()
            assert row is not None
            return {**params, **row}

        try:
            return self._with_retry(insert, "promoting a checkpoint")
        except DatabasePrivilegeError:
            raise DatabasePrivilegeError(PROMOTION_DENIED) from None

    def promotions(self, dataset: str | None = None) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.PROMOTIONS, {"dataset": dataset}).fetchall()

        return self._with_retry(query, "reading the promotions")

    # -- gates ------------------------------------------------------------------------------------
    def set_gate(
        self, rules: Sequence[GateRule], created_by: str, checkpoint: str | None = None, dataset: str | None = None
    ) -> int:
        """A new gate for one checkpoint or one dataset (the latest is in force; no rules: the less
        specific gates apply again)."""
        if (checkpoint is None) == (dataset is None):
            raise UsageError("a gate is a checkpoint's (--checkpoint) or a dataset's (--dataset)")
        if checkpoint is not None and not self.checkpoint_pairs(checkpoint):
            raise UsageError(f"no checkpoint named {quoted(checkpoint)} (ckpt-eval status lists them)")
        if dataset is not None:
            self.check_datasets_exist([dataset])
        params = {"checkpoint_name": checkpoint, "dataset": dataset, "rules": rules_to_json(tuple(rules)),
                  "created_by": created_by}  # fmt: skip

        def insert(conn: psycopg.Connection) -> int:
            with conn.transaction():
                return int(conn.execute(sql.INSERT_GATE, params).fetchone()[0])  # type: ignore[index]

        return self._with_retry(insert, "setting a gate")

    def gate_in_force(self, checkpoint: str | None = None, dataset: str | None = None) -> dict[str, Any] | None:
        """The latest gate of one scope, with its rules read (None: that scope has none)."""
        params = {"names": [checkpoint] if checkpoint else [], "datasets": [dataset] if dataset else []}

        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.GATES_IN_FORCE, params).fetchall()

        for row in self._with_retry(query, "reading a gate"):
            if row["checkpoint_name"] == checkpoint and row["dataset"] == dataset:
                scope = "checkpoint" if checkpoint else "dataset"
                return {**row, "parsed": rules_from_json(row["rules"], scope)}
        return None

    # -- reports ----------------------------------------------------------------------------------
    def report_run(self, run_id: int) -> dict[str, Any] | None:
        def query(conn: psycopg.Connection) -> dict[str, Any] | None:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.REPORT_RUN, {"run": run_id}).fetchone()

        return self._with_retry(query, "reading a run")

    def latest_runs(self, names: Sequence[str] | None, dataset: str | None, limit: int) -> list[dict[str, Any]]:
        params = {"names": None if names is None else list(names), "dataset": dataset, "limit": limit}

        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.REPORT_LATEST_RUNS, params).fetchall()

        return self._with_retry(query, "reading the latest runs")

    def run_metrics(self, run_ids: Sequence[int]) -> list[dict[str, Any]]:
        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.REPORT_METRICS, {"runs": list(run_ids)}).fetchall()

        return self._with_retry(query, "reading the metrics")

    def history(self, dataset: str, metrics: Sequence[str], limit: int = HISTORY_LIMIT) -> list[dict[str, Any]]:
        params = {"dataset": dataset, "metrics": list(metrics), "limit": limit}

        def query(conn: psycopg.Connection) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cur:
                return cur.execute(sql.REPORT_HISTORY, params).fetchall()

        return self._with_retry(query, "reading a dataset's history")
