"""Run ckpt-eval end to end on this machine, with nothing installed but PostgreSQL's binaries.

Starts a throwaway PostgreSQL (initdb + pg_ctl in a temporary directory, 127.0.0.1, a free
port), applies init.sql, gives ckpt_eval_app the password from db.credentials, runs
`ckpt-eval run` with only the demo vault password injected, prints latest_evaluations and
removes the server. Uses the public demo vault password of inventories/local/ only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ckpt_eval.credentials import decrypt_credentials, encrypt_mapping, read_password_file  # noqa: E402
from tests.support.pgcluster import MissingTool, PgCluster, create_app_database  # noqa: E402

DEMO_PASSWORD_FILE = ROOT / "inventories" / "local" / "vault-password"


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
            command = [
                str(Path(sys.executable).parent / "ckpt-eval"),
                "run",
                "--credentials",
                str(credentials),
                "--vault-password-file",
                str(DEMO_PASSWORD_FILE),
                "--checkpoint-root",
                str(ROOT / "checkpoints"),
            ]
            print("$ " + " ".join(command), flush=True)
            result = subprocess.run(command, cwd=ROOT, env=dict(os.environ), check=False)
            print(f"(ckpt-eval exited {result.returncode}: 0 all passed, 3 some checkpoint failed its gate)\n")
        print("SELECT * FROM ckpt_eval.latest_evaluations:")
        print(
            cluster.psql(
                "\\pset format aligned\n\\pset tuples_only off\n"
                "SELECT checkpoint_id, checkpoint_name, run_id, status, verdict,"
                " round(accuracy::numeric, 4) AS accuracy,"
                " round(f1_macro::numeric, 4) AS f1_macro, round(loss::numeric, 4) AS loss, n_samples, finished_at"
                " FROM ckpt_eval.latest_evaluations ORDER BY checkpoint_id",
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
