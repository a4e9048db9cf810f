"""Run ckpt-eval end to end on this machine, with nothing installed but PostgreSQL's binaries.

Starts a throwaway PostgreSQL (initdb + pg_ctl in a temporary directory, 127.0.0.1, a free
port), applies init.sql, gives ckpt_eval_app the password from db.credentials, creates the demo
table dataset (ckpt_eval_demo.breast_cancer from demo/breast_cancer.csv, granted to the app role as
the deployment grants it), registers it and the tabular demo checkpoint through the CLI, runs
`ckpt-eval run` with only the demo vault password injected, prints latest_evaluations and
removes the server. Uses the public demo vault password of inventories/local/ only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ckpt_eval.credentials import decrypt_credentials, encrypt_mapping, read_password_file  # noqa: E402
from tests.support.pgcluster import MissingTool, PgCluster, create_app_database  # noqa: E402

DEMO_PASSWORD_FILE = ROOT / "inventories" / "local" / "vault-password"
DEMO_CSV = ROOT / "demo" / "breast_cancer.csv"
DEMO_TABLE = "ckpt_eval_demo.breast_cancer"


def create_demo_table(cluster: PgCluster, dbname: str) -> list[str]:
    """The demo table as the greenplum role makes it (owner role's, loaded from the CSV, SELECT granted
    to the app role); returns its feature columns."""
    header = DEMO_CSV.read_text().splitlines()[0].split(",")
    features = header[1:-1]
    columns = ", ".join(["sample_id integer PRIMARY KEY"] + [f"{name} double precision NOT NULL" for name in features])
    with psycopg.connect(host=str(cluster.sockdir), port=cluster.port, user="postgres", dbname=dbname) as conn:
        conn.execute("CREATE SCHEMA ckpt_eval_demo AUTHORIZATION ckpt_eval_owner")
        conn.execute("SET ROLE ckpt_eval_owner")
        conn.execute(f"CREATE TABLE {DEMO_TABLE} ({columns}, diagnosis text NOT NULL)")
        with conn.cursor().copy(f"COPY {DEMO_TABLE} FROM STDIN WITH (FORMAT csv, HEADER true)") as copy:
            copy.write(DEMO_CSV.read_bytes())
        conn.execute("GRANT USAGE ON SCHEMA ckpt_eval_demo TO ckpt_eval_app")
        conn.execute(f"GRANT SELECT ON {DEMO_TABLE} TO ckpt_eval_app")
    return features


def main() -> int:
    vault_password = read_password_file(str(DEMO_PASSWORD_FILE))
    creds = decrypt_credentials(ROOT / "db.credentials", vault_password)
    cluster = PgCluster()
    try:
        cluster.init()
        cluster.write_hba([f"host {creds.dbname} {creds.user} 127.0.0.1/32 scram-sha-256"])
        cluster.start()
        cluster.wait_ready()
        create_app_database(cluster, ROOT / "init.sql", creds.password, dbname=creds.dbname)
        with tempfile.TemporaryDirectory(prefix="ckpt-eval-demo-") as tmp:
            # The same credentials, pointed at the throwaway server's port, still vault-encrypted.
            credentials = Path(tmp) / "db.credentials"
            fields = {k: v for k, v in vars(creds).items() if v is not None}
            credentials.write_text(encrypt_mapping({**fields, "port": cluster.port}, vault_password))
            ckpt_eval = str(Path(sys.executable).parent / "ckpt-eval")
            options = ["--credentials", str(credentials), "--vault-password-file", str(DEMO_PASSWORD_FILE)]
            features = create_demo_table(cluster, creds.dbname)
            # The tabular demo, registered as the local inventory declares it (classifier_datasets,
            # classifier_checkpoints): the table dataset, and a checkpoint on it and on the built-in rows.
            for argv in (
                ["dataset", "add", "breast_cancer_table", "--kind", "table", "--source", DEMO_TABLE,
                 "--features", ",".join(features), "--label-column", "diagnosis",
                 "--class-names", "malignant,benign"],
                ["register", "breast-cancer-mlp.pt", "--arch", "breast_cancer_mlp", "--name", "breast-cancer-mlp",
                 "--dataset", "breast_cancer", "--dataset", "breast_cancer_table",
                 "--checkpoint-root", str(ROOT / "checkpoints")],
            ):  # fmt: skip
                print("$ ckpt-eval " + " ".join(argv[:4]) + " ...", flush=True)
                subprocess.run([ckpt_eval, *argv, *options], cwd=ROOT, env=dict(os.environ), check=True)
            command = [ckpt_eval, "run", *options, "--checkpoint-root", str(ROOT / "checkpoints")]
            print("$ " + " ".join(command), flush=True)
            result = subprocess.run(command, cwd=ROOT, env=dict(os.environ), check=False)
            print(f"(ckpt-eval exited {result.returncode}: 0 all passed, 3 some checkpoint failed its gate)\n")
        print("SELECT * FROM ckpt_eval.latest_evaluations:")
        print(
            cluster.psql(
                "\\pset format aligned\n\\pset tuples_only off\n"
                "SELECT checkpoint_id, checkpoint_name, dataset, run_id, status, verdict,"
                " round(accuracy::numeric, 4) AS accuracy,"
                " round(f1_macro::numeric, 4) AS f1_macro, round(loss::numeric, 4) AS loss, n_samples, finished_at"
                " FROM ckpt_eval.latest_evaluations ORDER BY checkpoint_id, dataset",
                dbname=creds.dbname,
            )
        )
        return 0 if result.returncode in (0, 3) else result.returncode
    finally:
        cluster.destroy()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MissingTool as exc:  # PostgreSQL's binaries, runuser or the postgres user are not here
        sys.exit(f"make demo: {exc}")
