"""A team's own model on its own warehouse data, end to end through the CLI: the example sonar plugin
(installed in the venv), a table of 60 numeric columns with 'M'/'R' labels, and every bad dataset
failing only its own runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from ckpt_eval.architectures import build_model
from tests.support.deployment import Deployment

FEATURES = [f"f{i:02d}" for i in range(60)]
ROWS = 208  # as many as the UCI sonar data the seed project kept in Greenplum


def sonar_rows(seed: int, count: int) -> tuple[np.ndarray, list[str]]:
    """Synthetic sonar-like returns: 60 energies in [0, 1]; mines ('M') echo more in the middle bands."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(["R", "M"], size=count)
    bands = np.linspace(0, 1, 60)
    bump = np.exp(-((bands - 0.5) ** 2) / 0.02)
    features = rng.uniform(0, 0.6, size=(count, 60)) + np.where(labels[:, None] == "M", 0.3, 0.0) * bump
    return np.clip(features, 0, 1).round(6), list(labels)


def create_table(deployment: Deployment, table: str, features: np.ndarray, labels: list[str]) -> None:
    with deployment.superuser() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS lab")
        columns = ", ".join(f"{name} double precision" for name in FEATURES)
        conn.execute(f"CREATE TABLE lab.{table} (id serial PRIMARY KEY, {columns}, label text)")
        append_rows(deployment, table, features, labels)
        conn.execute("GRANT USAGE ON SCHEMA lab TO ckpt_eval_app")
        conn.execute(f"GRANT SELECT ON lab.{table} TO ckpt_eval_app")


def append_rows(deployment: Deployment, table: str, features: np.ndarray, labels: list[str]) -> None:
    statement = f"COPY lab.{table} ({', '.join(FEATURES)}, label) FROM STDIN"
    with deployment.superuser() as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        for row, label in zip(features, labels, strict=True):
            copy.write_row([*map(float, row), label])


def add_dataset(deployment: Deployment, name: str, table: str, *extra: str) -> None:
    columns = deployment.workdir / f"{name}-columns.txt"
    columns.write_text("\n".join(FEATURES) + "\n")
    added = deployment.ckpt_eval(
        "dataset", "add", name, "--kind", "table", "--source", f"lab.{table}", "--features-file", str(columns),
        "--label-column", "label", "--class-names", "R,M", *extra,
    )  # fmt: skip
    assert added.returncode == 0, added.output


def sonar_checkpoint(deployment: Deployment, features: np.ndarray, labels: list[str]) -> torch.nn.Module:
    """A sonar_mlp trained briefly on the rows (its own code: the plugin's module, plain SGD)."""
    torch.manual_seed(0)
    model = build_model("sonar_mlp")
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor([0 if label == "R" else 1 for label in labels])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    torch.save(model.state_dict(), deployment.checkpoint_root / "sonar.pt")
    return model


def latest(deployment: Deployment, checkpoint: str) -> dict[str, dict[str, str]]:
    rows = deployment.rows(
        "SELECT dataset, status, coalesce(error, ''), n_samples FROM ckpt_eval.latest_evaluations "
        f"WHERE checkpoint_name = '{checkpoint}'"
    )
    return {dataset: {"status": status, "error": error, "n": n} for dataset, status, error, n in rows}


def metric(deployment: Deployment, checkpoint: str, dataset: str, name: str) -> float:
    [[value]] = deployment.rows(
        "SELECT m.value FROM ckpt_eval.evaluation_metrics m JOIN ckpt_eval.latest_evaluations l USING (run_id) "
        f"WHERE l.checkpoint_name = '{checkpoint}' AND l.dataset = '{dataset}' AND m.metric = '{name}' "
        "AND m.class_label = ''"
    )
    return float(value)


def test_the_sonar_plugin_on_a_table_dataset_matches_scikit_learn(deployment: Deployment) -> None:
    architectures = json.loads(deployment.ckpt_eval("architectures", "--format", "json").stdout)
    rows = architectures["architectures"] if isinstance(architectures, dict) else architectures
    sonar = next(row for row in rows if row["name"] == "sonar_mlp")
    assert (sonar["package"], sonar["version"]) == ("ckpt-eval-sonar", "1.0.0")

    features, labels = sonar_rows(seed=1, count=ROWS)
    create_table(deployment, "sonar", features, labels)
    add_dataset(deployment, "sonar", "sonar")
    model = sonar_checkpoint(deployment, features, labels)
    registered = deployment.ckpt_eval(
        "register", "sonar.pt", "--arch", "sonar_mlp", "--dataset", "sonar", "--min-accuracy", "0", "--min-f1", "0"
    )
    assert registered.returncode == 0, registered.output
    result = deployment.ckpt_eval("run", "--dataset", "sonar")
    assert result.returncode == 0, result.output
    assert latest(deployment, "sonar")["sonar"]["n"] == str(ROWS)

    # An independent computation on the same rows: the plugin's module in plain torch, scikit-learn metrics.
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.tensor(features, dtype=torch.float32)), dim=1).numpy()
    truth = np.array([0 if label == "R" else 1 for label in labels])
    predicted = probabilities.argmax(axis=1)
    assert metric(deployment, "sonar", "sonar", "accuracy") == pytest.approx(accuracy_score(truth, predicted))
    assert metric(deployment, "sonar", "sonar", "f1_macro") == pytest.approx(
        f1_score(truth, predicted, average="macro")
    )
    assert metric(deployment, "sonar", "sonar", "roc_auc") == pytest.approx(
        roc_auc_score(truth, probabilities[:, 1]), abs=1e-4
    )
    assert metric(deployment, "sonar", "sonar", "log_loss") == pytest.approx(log_loss(truth, probabilities), rel=1e-4)
    [[package, version]] = deployment.rows(
        "SELECT arch_package, arch_version FROM ckpt_eval.evaluation_runs WHERE checkpoint_name = 'sonar'"
    )
    assert (package, version) == ("ckpt-eval-sonar", "1.0.0")

    # Rows appended to the table: a new version; exactly the pairs on it are evaluated again.
    more, more_labels = sonar_rows(seed=2, count=10)
    append_rows(deployment, "sonar", more, more_labels)
    again = deployment.ckpt_eval("run")  # the demo pairs too, left pending by --dataset sonar above
    assert again.returncode == 3, again.output  # the undertrained demo checkpoint fails its gate
    assert "dataset 'sonar' has a new version: 1 pair(s) queued again" in again.stderr
    runs = dict(deployment.rows("SELECT checkpoint_name, count(*) FROM ckpt_eval.evaluation_runs GROUP BY 1"))
    assert runs == {"sonar": "2", "digits-mlp-good": "1", "digits-mlp-undertrained": "1"}
    assert latest(deployment, "sonar")["sonar"]["n"] == str(ROWS + 10)
    assert deployment.ckpt_eval("run").returncode == 0
    assert (
        dict(deployment.rows("SELECT checkpoint_name, count(*) FROM ckpt_eval.evaluation_runs GROUP BY 1"))["sonar"]
        == "2"
    )


def test_each_bad_dataset_fails_only_its_own_runs(deployment: Deployment) -> None:
    features, labels = sonar_rows(seed=3, count=40)
    create_table(deployment, "good", features, labels)
    add_dataset(deployment, "good", "good")
    sonar_checkpoint(deployment, features, labels)

    def bad_table(name: str, sql: str) -> None:
        create_table(deployment, name, features, labels)
        with deployment.superuser() as conn:
            conn.execute(sql.format(table=f"lab.{name}"))
        add_dataset(deployment, name, name)

    bad_table("nulls", "UPDATE {table} SET f07 = NULL WHERE id = 5")
    bad_table("unknown_label", "UPDATE {table} SET label = 'X' WHERE id = 3")
    bad_table(
        "text_feature", "ALTER TABLE {table} ALTER COLUMN f03 TYPE text; UPDATE {table} SET f03 = 'loud' WHERE id = 2"
    )
    bad_table("missing_column", "ALTER TABLE {table} DROP COLUMN f59")
    bad_table("not_granted", "REVOKE SELECT ON {table} FROM ckpt_eval_app")
    datasets = ["good", "nulls", "unknown_label", "text_feature", "missing_column", "not_granted", "digits"]
    registered = deployment.ckpt_eval(
        "register", "sonar.pt", "--arch", "sonar_mlp", *[arg for d in datasets for arg in ("--dataset", d)],
        "--min-accuracy", "0", "--min-f1", "0",
    )  # fmt: skip
    assert registered.returncode == 0, registered.output
    result = deployment.ckpt_eval("run")
    assert result.returncode == 3, result.output
    outcome = latest(deployment, "sonar")
    assert outcome["good"]["status"] == "succeeded"
    expected = {
        "nulls": "f07",
        "unknown_label": "'X'",
        "text_feature": "f03",
        "missing_column": "f59",
        "not_granted": "GRANT SELECT",
        "digits": "60",  # the architecture takes 60 features; digits has 1x8x8 images: both shapes named
    }
    for dataset, fragment in expected.items():
        assert outcome[dataset]["status"] == "failed", (dataset, outcome[dataset])
        assert fragment in outcome[dataset]["error"], (dataset, outcome[dataset]["error"])
    assert outcome["digits"]["error"].count("8") >= 2
    assert latest(deployment, "digits-mlp-good")["digits"]["status"] == "succeeded"
