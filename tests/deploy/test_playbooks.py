"""The real ansible-playbook against this machine through the local inventory, and the checks
that need no target: syntax, ansible-lint (production profile), yamllint, the production preflight
and the gpinitsystem configuration rendered from the production inventory."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import yaml

from ckpt_eval.credentials import decrypt_credentials, read_password_file

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCAL_INVENTORY = "inventories/local/hosts.yml"
PRODUCTION_INVENTORY = "inventories/production/hosts.yml"
REPORT_DIR = REPO / "reports" / "localhost"  # the local inventory's classifier_report_dir, this host's part
LOCAL_POSTGRES = ("15", "main")  # the greenplum role's greenplum_postgres_version and _cluster defaults
DEMO_PASSWORD_FILE = REPO / "inventories" / "local" / "vault-password"
PLAYBOOKS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "playbooks").glob("*.yml"))
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the local deployment runs as root")


def demo_secrets() -> list[str]:
    """Every secret the local deployment handles: the vault password, the app and owner passwords."""
    vault_password = read_password_file(str(DEMO_PASSWORD_FILE))
    creds = decrypt_credentials(REPO / "db.credentials", vault_password)
    owner = ansible_vault_view(REPO / "inventories" / "local" / "group_vars" / "all" / "vault.yml")
    return [vault_password.decode(), creds.password, yaml.safe_load(owner)["vault_ckpt_eval_owner_password"]]


def ansible_vault_view(path: Path) -> str:
    return subprocess.run(
        [BIN / "ansible-vault", "view", "--vault-password-file", DEMO_PASSWORD_FILE, path],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "CKPT_EVAL_"))}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def changed(self) -> dict[str, int]:
        return {host: counts["changed"] for host, counts in self.recap.items()}


def ansible_playbook(
    *args: str, inventory: str = LOCAL_INVENTORY, password_file: Path = DEMO_PASSWORD_FILE
) -> PlaybookRun:
    completed = subprocess.run(
        [BIN / "ansible-playbook", "-i", inventory, "--vault-password-file", str(password_file), *args],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    output = completed.stdout + completed.stderr
    recap = {
        host: {"ok": int(ok), "changed": int(changed), "unreachable": int(unreachable), "failed": int(failed)}
        for host, ok, changed, unreachable, failed in RECAP.findall(output)
    }
    return PlaybookRun(completed.returncode, output, recap)


def drop_the_deployed_database() -> None:
    """A first deployment, whatever an earlier one on this machine left: the cluster of the local
    inventory may exist but be stopped (nothing restarts it on a machine without systemd), and a
    DROP sent to a stopped server silently dropped nothing, so the deploy reused the old database."""
    if shutil.which("pg_lsclusters") is None:
        return  # PostgreSQL is not installed yet: the deploy starts from nothing
    listed = subprocess.run(
        ["pg_lsclusters", "--no-header", LOCAL_POSTGRES[0], LOCAL_POSTGRES[1]],
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0 or not listed.stdout.strip():
        return  # no cluster yet
    if "online" not in listed.stdout:
        subprocess.run(["pg_ctlcluster", *LOCAL_POSTGRES, "start"], capture_output=True, check=True)
    superuser_sql("DROP DATABASE IF EXISTS ckpt_eval WITH (FORCE)", dbname="postgres")


def superuser_sql(query: str, dbname: str = "ckpt_eval") -> str:
    """Run SQL as the postgres superuser over the local socket (peer authentication)."""
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-d", dbname, "-c", query],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def latest_runs() -> dict[int, int]:
    """checkpoint_id -> number of runs."""
    out = superuser_sql("SELECT checkpoint_id, count(*) FROM ckpt_eval.evaluation_runs GROUP BY 1 ORDER BY 1")
    return {int(a): int(b) for a, b in (line.split("|") for line in out.split())}


# -- no target needed -------------------------------------------------------------------------------


@pytest.mark.parametrize("playbook", PLAYBOOKS)
@pytest.mark.parametrize("inventory", [LOCAL_INVENTORY, PRODUCTION_INVENTORY])
def test_syntax_check(playbook: str, inventory: str) -> None:
    result = ansible_playbook("--syntax-check", playbook, inventory=inventory)
    assert result.returncode == 0, result.output


def test_ansible_lint_production_profile_passes_with_no_rule_disabled() -> None:
    config = yaml.safe_load((REPO / ".ansible-lint").read_text())
    assert config["profile"] == "production"
    assert not config.get("skip_list"), "no rule may be disabled"
    assert not config.get("warn_list"), "no rule may be disabled"
    env = {**environment(), "ANSIBLE_VAULT_PASSWORD_FILE": str(DEMO_PASSWORD_FILE)}
    result = subprocess.run(
        [BIN / "ansible-lint", "--profile", "production", "--nocolor"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "noqa"
        not in subprocess.run(
            ["grep", "-rn", "noqa", "roles", "playbooks", "inventories"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    )


def test_yamllint_passes() -> None:
    result = subprocess.run(
        [BIN / "yamllint", "--strict", "-c", ".yamllint", "roles", "playbooks", "inventories", ".ansible-lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_inventory_with_the_demo_password_stops_before_any_change() -> None:
    for playbook in ("playbooks/deploy.yml", "playbooks/evaluate.yml"):
        result = ansible_playbook(playbook, inventory=PRODUCTION_INVENTORY)
        assert result.returncode != 0
        assert "public demo vault password" in result.output
        assert "ansible-vault rekey" in result.output
        assert all(counts["changed"] == 0 for counts in result.recap.values()), result.output
        # Only the preflight ran: no host was contacted, nothing was gathered.
        assert "Gathering Facts" not in result.output
        assert "UNREACHABLE" not in result.output


def test_production_vault_password_script_prints_the_environment_secret() -> None:
    script = REPO / "inventories" / "production" / "vault-password.sh"
    assert os.access(script, os.X_OK)
    ok = subprocess.run([script], env={"ANSIBLE_VAULT_PASSWORD": "s3cret"}, capture_output=True, text=True, check=False)
    assert (ok.returncode, ok.stdout) == (0, "s3cret\n")
    missing = subprocess.run([script], env={}, capture_output=True, text=True, check=False)
    assert missing.returncode != 0
    assert "ANSIBLE_VAULT_PASSWORD is not set" in missing.stderr


def test_gpinitsystem_configuration_renders_from_the_production_inventory(tmp_path: Path) -> None:
    result = ansible_playbook(
        "tests/deploy/render_gpinitsystem.yml",
        "-e",
        "ansible_connection=local",
        "-e",
        "ansible_python_interpreter=/usr/bin/python3",
        "-e",
        f"render_dir={tmp_path}",
        inventory=PRODUCTION_INVENTORY,
    )
    assert result.returncode == 0, result.output
    config = (tmp_path / "gpinitsystem_config").read_text()
    assert "COORDINATOR_HOSTNAME=cdw\n" in config
    assert "COORDINATOR_PORT=5432\n" in config
    assert f"MACHINE_LIST_FILE={tmp_path}/hostfile_gpinitsystem\n" in config
    assert "declare -a DATA_DIRECTORY=(/data/primary)" in config
    assert (tmp_path / "hostfile_gpinitsystem").read_text().split() == ["sdw1", "sdw2"]


# -- the real deployment on this machine ---------------------------------------------------------------


@pytest.fixture(scope="module")
def first_deploy() -> PlaybookRun:
    if os.geteuid() != 0:
        pytest.skip("the local deployment runs as root")
    # A fresh database, whatever an earlier deployment on this machine left in it (a failed pair
    # stays failed across deploys, as it should): the tests below describe a first deployment.
    drop_the_deployed_database()
    shutil.rmtree(REPORT_DIR, ignore_errors=True)
    return ansible_playbook("-vv", "playbooks/deploy.yml")


@needs_root
def test_deploy_provisions_and_evaluates_every_checkpoint(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0, first_deploy.output[-5000:]
    assert first_deploy.recap["localhost"]["failed"] == 0
    assert "digits-mlp-good" in first_deploy.output
    assert "accuracy=" in first_deploy.output, "the deploy ends by printing the metrics"
    runs = latest_runs()
    assert set(runs) >= {1, 2}
    assert all(count >= 1 for count in runs.values())


@needs_root
def test_deploy_ends_with_the_report_of_the_demo_runs_on_the_controller(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0
    assert "reports/localhost/report.html" in first_deploy.output
    html = (REPORT_DIR / "report.html").read_text()
    for name in ("digits-mlp-good", "digits-mlp-undertrained", "breast-cancer-mlp"):
        assert name in html
    assert "<script" not in html
    assert "data:image/png;base64," in html, "the figures are inside the page"
    run_ids = [int(r) for r in superuser_sql("SELECT run_id FROM ckpt_eval.evaluation_runs ORDER BY 1").split()]
    pngs = {path.name for path in REPORT_DIR.glob("*.png")}
    assert {f"run-{run}-confusion-counts.png" for run in run_ids} <= pngs, "a heatmap of every demo run"
    binary = superuser_sql("SELECT run_id FROM ckpt_eval.evaluation_runs WHERE dataset = 'breast_cancer'").split()
    assert {f"run-{run}-roc.png" for run in binary} <= pngs, "ROC curves of the two-class runs"


@needs_root
def test_promote_yml_records_the_owners_promotion_and_the_app_role_may_not_promote(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0
    with app_connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(
            "INSERT INTO ckpt_eval.champions (dataset, checkpoint_name, checkpoint_id, promoted_by) "
            "VALUES ('digits', 'digits-mlp-good', 1, 'me')"
        )
    # JSON: a reason may hold quotes (-e key=value splits on them).
    args = ("-e", json.dumps({"checkpoint": "digits-mlp-good", "dataset": "digits", "reason": "the demo's best"}))
    promoted = ansible_playbook("playbooks/promote.yml", *args)
    assert promoted.returncode == 0, promoted.output[-5000:]
    assert promoted.changed()["localhost"] == 1
    champion = superuser_sql(
        "SELECT checkpoint_name, reason, promoted_by LIKE '% via ansible' FROM ckpt_eval.current_champions"
    )
    assert champion.strip() == "digits-mlp-good|the demo's best|t"
    again = ansible_playbook("playbooks/promote.yml", *args)
    assert again.returncode == 0, again.output[-5000:]
    assert again.changed() == {"localhost": 0}, "it already is the champion"
    unknown = ansible_playbook("playbooks/promote.yml", "-e", "checkpoint=nope", "-e", "dataset=digits")
    assert unknown.returncode != 0
    assert "Nothing was changed" in unknown.output
    assert superuser_sql("SELECT count(*) FROM ckpt_eval.champions").strip() == "1"


@needs_root
def test_second_deploy_changes_nothing(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0
    before = latest_runs()
    again = ansible_playbook("playbooks/deploy.yml")
    assert again.returncode == 0, again.output[-5000:]
    assert again.changed() == {"localhost": 0}, again.output[-5000:]
    assert latest_runs() == before


@needs_root
def test_check_diff_reports_no_change_and_prints_no_secret(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0
    check = ansible_playbook("--check", "--diff", "playbooks/deploy.yml")
    assert check.returncode == 0, check.output[-5000:]
    assert check.changed() == {"localhost": 0}, check.output[-5000:]
    for secret in demo_secrets():
        assert secret not in check.output


@needs_root
def test_rerun_of_one_checkpoint_adds_exactly_one_run_and_no_secret_in_argv(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0
    before = latest_runs()
    secrets = demo_secrets()
    seen: list[str] = []
    done = threading.Event()

    def watch_processes() -> None:
        while not done.is_set():
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        continue
                    if "ckpt-eval" in cmdline and " run" in cmdline:
                        seen.append(cmdline)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_processes, daemon=True)
    watcher.start()
    try:
        rerun = ansible_playbook("-vv", "playbooks/evaluate.yml", "-e", "force=true", "-e", "checkpoint_ids=[1]")
    finally:
        done.set()
        watcher.join()
    assert rerun.returncode == 0, rerun.output[-5000:]
    assert rerun.changed() == {"localhost": 1}
    after = latest_runs()
    assert after[1] == before[1] + 1
    assert {k: v for k, v in after.items() if k != 1} == {k: v for k, v in before.items() if k != 1}
    assert seen, "the job's command line was observed while it ran"
    for text in [*seen, rerun.output]:
        for secret in secrets:
            assert secret not in text


@needs_root
def test_gate_failure_is_a_result_unless_fail_on_gate(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0
    reported = ansible_playbook("playbooks/evaluate.yml", "-e", "force=true", "-e", '{"checkpoint_ids": [2]}')
    assert reported.returncode == 0, reported.output[-3000:]
    assert "exit 3" in reported.output
    gated = ansible_playbook(
        "playbooks/evaluate.yml", "-e", "force=true", "-e", '{"checkpoint_ids": [2]}', "-e", "fail_on_gate=true"
    )
    assert gated.returncode != 0
    assert "failed its quality gate" in gated.output
    dry = ansible_playbook("playbooks/evaluate.yml", "-e", "dry_run=true", "-e", "force=true")
    assert dry.returncode == 0
    assert dry.changed() == {"localhost": 0}


@needs_root
def test_deployment_output_and_written_files_hold_no_secret(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0
    secrets = demo_secrets()
    for secret in secrets:
        assert secret not in first_deploy.output, "a secret was printed at -vv"
    written = [
        *Path("/etc/ckpt-eval").rglob("*"),
        *Path("/opt/ckpt-eval/src").rglob("*"),
        *Path("/var/lib/ckpt-eval").rglob("*"),
        *Path("/var/lib/ckpt-eval-db").rglob("*"),
        *Path("/etc/postgresql").rglob("*"),
    ]
    files = [path for path in written if path.is_file()]
    assert Path("/etc/ckpt-eval/db.credentials") in files
    for path in files:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"{path} holds a secret"
    assert Path("/etc/ckpt-eval/db.credentials").read_bytes().startswith(b"$ANSIBLE_VAULT;")
    mode = Path("/etc/ckpt-eval/db.credentials").stat().st_mode & 0o777
    assert mode == 0o640
    assert not Path("/etc/ckpt-eval/vault-password").exists(), "no schedule, so no stored vault password"


@needs_root
def test_pg_hba_admits_the_app_role_only_from_the_classifier_address(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0
    creds = decrypt_credentials(REPO / "db.credentials", read_password_file(str(DEMO_PASSWORD_FILE)))
    with psycopg.connect(**creds.connect_kwargs()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("ckpt_eval_app",)
    refused = [
        {"host": "/var/run/postgresql"},  # same role and password over the local socket: no hba entry
        {"dbname": "postgres"},  # same role from the right address to another database
    ]
    for change in refused:
        with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
            psycopg.connect(**{**creds.connect_kwargs(), **change, "connect_timeout": 5})
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        psycopg.connect(
            host="127.0.0.1", port=creds.port, dbname="ckpt_eval", user="postgres", password="x", connect_timeout=5
        )
    # The database keeps a SCRAM verifier, never the password itself.
    verifier = superuser_sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'ckpt_eval_app'", "postgres")
    assert verifier.startswith("SCRAM-SHA-256$")


@needs_root
def test_tls_on_makes_the_app_role_use_it(first_deploy: PlaybookRun) -> None:
    """Runs last: switches TLS on (self-signed), checks hostssl, then deploys the default again."""
    assert first_deploy.returncode == 0
    creds = decrypt_credentials(REPO / "db.credentials", read_password_file(str(DEMO_PASSWORD_FILE)))
    certificate = Path("/etc/postgresql/15/main/ckpt-eval-server.crt")
    try:
        tls = ansible_playbook("playbooks/deploy.yml", "-e", "greenplum_tls=true")
        assert tls.returncode == 0, tls.output[-5000:]
        verified = {**creds.connect_kwargs(), "sslmode": "verify-full", "sslrootcert": str(certificate)}
        with psycopg.connect(**verified) as conn:
            # libpq's view of the session (pg_stat_ssl is PostgreSQL 9.5+: tests/support/pg94.py)
            assert conn.execute("SELECT current_user").fetchone() == (creds.user,)
            assert conn.pgconn.ssl_in_use is True
        with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
            psycopg.connect(**{**creds.connect_kwargs(), "sslmode": "disable", "connect_timeout": 5})
        assert (Path("/etc/postgresql/15/main/ckpt-eval-server.key").stat().st_mode & 0o777) == 0o600
        again = ansible_playbook("playbooks/deploy.yml", "-e", "greenplum_tls=true")
        assert again.changed() == {"localhost": 0}, again.output[-5000:]
    finally:
        restored = ansible_playbook("playbooks/deploy.yml")
    assert restored.returncode == 0, restored.output[-5000:]
    with psycopg.connect(**{**creds.connect_kwargs(), "sslmode": "disable"}) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("ckpt_eval_app",)


@needs_root
def test_datasets_are_installed_only_when_their_checksums_match(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "data"
    source.mkdir()
    target.mkdir()
    files = {"t10k-images-idx3-ubyte.gz": b"images", "t10k-labels-idx1-ubyte.gz": b"labels"}
    for name, content in files.items():
        (source / name).write_bytes(content)

    def install(checksums: dict[str, str]) -> PlaybookRun:
        extra = {
            "classifier_fashion_mnist_source": str(source),
            "classifier_fashion_mnist_files": checksums,
            "classifier_data_dir": str(target),
            "classifier_user": "root",
        }
        (tmp_path / "vars.json").write_text(json.dumps(extra))
        return ansible_playbook("tests/deploy/install_datasets.yml", "-e", f"@{tmp_path / 'vars.json'}")

    good = {name: "sha256:" + hashlib.sha256(content).hexdigest() for name, content in files.items()}
    tampered = {**good, "t10k-labels-idx1-ubyte.gz": "sha256:" + "0" * 64}
    refused = install(tampered)
    assert refused.returncode != 0
    assert not (target / "fashion_mnist" / "t10k-images-idx3-ubyte.gz").exists(), "nothing installed"
    installed = install(good)
    assert installed.returncode == 0, installed.output[-3000:]
    for name, content in files.items():
        assert (target / "fashion_mnist" / name).read_bytes() == content
    assert install(good).changed() == {"localhost": 0}


# -- issue 10: the tabular demo, dataset sources, architecture plugins -------------------------------------

DEMO_CSV = REPO / "demo" / "breast_cancer.csv"
DEMO_TABLE = "ckpt_eval_demo.breast_cancer"
DEMO_CHECKPOINT = REPO / "checkpoints" / "breast-cancer-mlp.pt"
SONAR_PLUGIN = REPO / "examples" / "sonar-plugin"


def latest_evaluations() -> dict[tuple[str, str], dict[str, str]]:
    """(checkpoint name, dataset) -> its latest run's headline columns, as psql prints them."""
    columns = ["checkpoint_name", "dataset", "status", "verdict", "accuracy", "f1_macro", "n_samples"]
    out = superuser_sql(f"SELECT {', '.join(columns)} FROM ckpt_eval.latest_evaluations")
    rows = [dict(zip(columns, line.split("|"), strict=True)) for line in out.splitlines() if line]
    return {(row["checkpoint_name"], row["dataset"]): row for row in rows}


def pair_runs() -> dict[tuple[str, str], int]:
    """(checkpoint name, dataset) -> number of runs."""
    out = superuser_sql("SELECT checkpoint_name, dataset, count(*) FROM ckpt_eval.evaluation_runs GROUP BY 1, 2")
    return {(name, dataset): int(count) for name, dataset, count in (line.split("|") for line in out.split())}


def app_connection() -> psycopg.Connection:
    creds = decrypt_credentials(REPO / "db.credentials", read_password_file(str(DEMO_PASSWORD_FILE)))
    return psycopg.connect(**creds.connect_kwargs(), autocommit=True)


def demo_rows() -> list[list[str]]:
    lines = DEMO_CSV.read_text().splitlines()
    return [line.split(",") for line in lines[1:]]


@needs_root
def test_deploy_evaluates_the_tabular_demo_on_the_table_dataset(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0, first_deploy.output[-5000:]
    rows = demo_rows()
    assert superuser_sql(f"SELECT count(*), sum(sample_id) FROM {DEMO_TABLE}").strip() == (
        f"{len(rows)}|{sum(int(row[0]) for row in rows)}"
    )
    evaluations = latest_evaluations()
    table = evaluations[("breast-cancer-mlp", "breast_cancer_table")]
    builtin = evaluations[("breast-cancer-mlp", "breast_cancer")]
    assert (table["status"], table["verdict"]) == ("succeeded", "pass"), table
    assert table["n_samples"] == str(len(rows))
    # An independent computation over the CSV agrees...
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from ckpt_eval.architectures import get_architecture

    architecture = get_architecture("breast_cancer_mlp")
    model = architecture.spec.build()
    model.load_state_dict(torch.load(DEMO_CHECKPOINT, weights_only=True))
    model.eval()
    features = torch.tensor([[float(value) for value in row[1:-1]] for row in rows], dtype=torch.float32)
    labels = np.array([architecture.class_names.index(row[-1]) for row in rows])
    with torch.no_grad():
        probabilities = torch.softmax(model(architecture.prepare(features)), dim=1).numpy()
    predictions = probabilities.argmax(axis=1)
    assert float(table["accuracy"]) == pytest.approx(accuracy_score(labels, predictions), abs=1e-9)
    assert float(table["f1_macro"]) == pytest.approx(f1_score(labels, predictions, average="macro"), abs=1e-9)
    roc_auc = superuser_sql(
        "SELECT m.value FROM ckpt_eval.evaluation_metrics m JOIN ckpt_eval.latest_evaluations l USING (run_id)"
        " WHERE l.checkpoint_name = 'breast-cancer-mlp' AND l.dataset = 'breast_cancer_table'"
        " AND m.metric = 'roc_auc' AND m.class_label = ''"
    )
    assert float(roc_auc) == pytest.approx(roc_auc_score(labels, probabilities[:, 1]), abs=1e-3)
    assert "breast_cancer_table" in first_deploy.output, "the summary shows the table pair"
    # ... and so does the pair on the built-in dataset: the table holds its test split.
    assert (table["accuracy"], table["f1_macro"], table["n_samples"]) == (
        builtin["accuracy"],
        builtin["f1_macro"],
        builtin["n_samples"],
    )


@needs_root
def test_deploy_scores_the_unlabeled_demo_rows_and_score_yml_reruns(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0, first_deploy.output[-5000:]
    rows = demo_rows()
    assert re.search(r'breast_cancer_demo\\?": run 1 done', first_deploy.output), "the deploy ends with the summary"
    import numpy as np
    import torch

    from ckpt_eval.architectures import get_architecture

    architecture = get_architecture("breast_cancer_mlp")
    model = architecture.spec.build()
    model.load_state_dict(torch.load(DEMO_CHECKPOINT, weights_only=True))
    features = torch.tensor([[float(value) for value in row[1:-1]] for row in rows], dtype=torch.float32)
    with torch.no_grad():
        expected = torch.softmax(model.eval()(architecture.prepare(features)).double(), dim=1).numpy()
    out = superuser_sql(
        "SELECT p.row_key, r.class_names[p.predicted_index + 1], p.positive_probability "
        "FROM ckpt_eval_demo.breast_cancer_predictions p "
        "JOIN ckpt_eval.scoring_runs r ON r.scoring_run_id = p.scoring_run_id "
        "WHERE p.scoring_run_id = 1 ORDER BY p.row_key"
    )
    written = [line.split("|") for line in out.splitlines() if line]
    assert [int(key) for key, _, _ in written] == [int(row[0]) for row in rows]  # each row exactly once
    for (_, label, positive), probabilities in zip(written, expected, strict=True):
        assert label == architecture.class_names[int(np.argmax(probabilities))]
        assert float(positive) == pytest.approx(probabilities[1], abs=1e-6)
    # The app role may read and append predictions, nothing else.
    with app_connection() as conn:
        for statement in (
            "DELETE FROM ckpt_eval_demo.breast_cancer_predictions",
            "UPDATE ckpt_eval_demo.breast_cancer_predictions SET predicted_index = 0",
            "TRUNCATE ckpt_eval_demo.breast_cancer_predictions",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    rerun = ansible_playbook("playbooks/score.yml", "-e", "rescore=true", "-e", "limit=10")
    assert rerun.returncode == 0, rerun.output[-5000:]
    assert "10 row(s) scored" in rerun.output
    for secret in demo_secrets():
        assert secret not in rerun.output
    latest = superuser_sql(
        "SELECT count(*), count(DISTINCT scoring_run_id) FROM ckpt_eval_demo.breast_cancer_predictions_latest"
    )
    assert latest.strip() == f"{len(rows)}|2"  # the 10 rescored rows show their new prediction


@needs_root
def test_app_role_reads_the_granted_dataset_source_and_nothing_else(first_deploy: PlaybookRun) -> None:
    assert first_deploy.returncode == 0
    superuser_sql(
        "CREATE TABLE ckpt_eval_demo.not_granted (id integer PRIMARY KEY); INSERT INTO ckpt_eval_demo.not_granted"
        " VALUES (1)"
    )
    try:
        with app_connection() as conn:
            assert conn.execute(f"SELECT count(*) FROM {DEMO_TABLE}").fetchone() == (len(demo_rows()),)
            for statement in (
                "SELECT * FROM ckpt_eval_demo.not_granted",
                f"INSERT INTO {DEMO_TABLE} SELECT * FROM {DEMO_TABLE} LIMIT 1",
                f"DELETE FROM {DEMO_TABLE}",
                "CREATE TABLE ckpt_eval_demo.mine (id integer)",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        # The grant is exactly USAGE on the schema and SELECT on the table.
        acl = superuser_sql(
            "SELECT (SELECT nspacl FROM pg_namespace WHERE nspname = 'ckpt_eval_demo')::text, "
            f"(SELECT relacl FROM pg_class WHERE oid = '{DEMO_TABLE}'::regclass)::text"
        )
        schema_acl, table_acl = acl.strip().split("|")
        assert "ckpt_eval_app=U/" in schema_acl
        assert "ckpt_eval_app=r/" in table_acl
    finally:
        superuser_sql("DROP TABLE ckpt_eval_demo.not_granted")


@needs_root
def test_a_bad_dataset_source_stops_before_any_grant(first_deploy: PlaybookRun, tmp_path: Path) -> None:
    assert first_deploy.returncode == 0
    (tmp_path / "vars.json").write_text(json.dumps({"greenplum_dataset_sources": ["public.x; DROP TABLE y"]}))
    refused = ansible_playbook("playbooks/deploy.yml", "-e", f"@{tmp_path / 'vars.json'}")
    assert refused.returncode != 0
    assert 'as "schema.table"' in refused.output
    assert "public.x; DROP TABLE y" in refused.output


@needs_root
def test_appended_rows_reevaluate_only_the_table_pair_and_the_table_is_loaded_only_when_empty(
    first_deploy: PlaybookRun,
) -> None:
    assert first_deploy.returncode == 0
    before = pair_runs()
    rows = len(demo_rows())
    # An operator appends a row: the deployment does not load the CSV again, and the table's new
    # version is evaluated (only the pair on the table).
    superuser_sql(
        f"INSERT INTO {DEMO_TABLE} SELECT sample_id + 100000, "
        + ", ".join(demo_rows_columns()[1:])
        + f" FROM {DEMO_TABLE} WHERE sample_id = 0"
    )
    try:
        appended = ansible_playbook("playbooks/deploy.yml")
        assert appended.returncode == 0, appended.output[-5000:]
        assert superuser_sql(f"SELECT count(*) FROM {DEMO_TABLE}").strip() == str(rows + 1)
        after = pair_runs()
        assert (
            after[("breast-cancer-mlp", "breast_cancer_table")]
            == before[("breast-cancer-mlp", "breast_cancer_table")] + 1
        )
        assert {k: v for k, v in after.items() if k[1] != "breast_cancer_table"} == {
            k: v for k, v in before.items() if k[1] != "breast_cancer_table"
        }
        assert latest_evaluations()[("breast-cancer-mlp", "breast_cancer_table")]["n_samples"] == str(rows + 1)
    finally:
        superuser_sql(f"DELETE FROM {DEMO_TABLE} WHERE sample_id >= 100000")
    # Emptied, it is loaded again from the CSV: the version evaluated before the row was appended.
    superuser_sql(f"TRUNCATE {DEMO_TABLE}")
    reloaded = ansible_playbook("playbooks/deploy.yml")
    assert reloaded.returncode == 0, reloaded.output[-5000:]
    assert superuser_sql(f"SELECT count(*) FROM {DEMO_TABLE}").strip() == str(rows)
    assert latest_evaluations()[("breast-cancer-mlp", "breast_cancer_table")]["n_samples"] == str(rows)
    assert ansible_playbook("playbooks/deploy.yml").changed() == {"localhost": 0}


def demo_rows_columns() -> list[str]:
    return DEMO_CSV.read_text().splitlines()[0].split(",")


def build_wheel(source: Path, out: Path) -> Path:
    """A wheel of the project at source, built offline with this venv's setuptools."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [BIN / "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(source)],
        check=True,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
    )
    (wheel,) = out.glob("*.whl")
    return wheel


def tiny_project(root: Path, name: str, version: str, value: str) -> Path:
    """A throwaway distribution with one module, `<name>.VALUE = value`."""
    module = name.replace("-", "_")
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(f"VALUE = {value!r}\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n[tool.setuptools]\npackages = ["{module}"]\n'
    )
    return root


def simple_index(root: Path, wheels: list[Path]) -> str:
    """A PEP 503 index in a directory (file:// URL), as an operator's package index serves it."""
    by_project: dict[str, list[Path]] = {}
    for wheel in wheels:
        by_project.setdefault(wheel.name.split("-")[0].replace("_", "-").lower(), []).append(wheel)
    for project, files in by_project.items():
        directory = root / project
        directory.mkdir(parents=True)
        links = []
        for wheel in files:
            (directory / wheel.name).write_bytes(wheel.read_bytes())
            links.append(f'<a href="{wheel.name}">{wheel.name}</a>')
        (directory / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>\n")
    (root / "index.html").write_text(
        "<html><body>" + "".join(f'<a href="{p}/">{p}</a>' for p in by_project) + "</body></html>\n"
    )
    return root.as_uri() + "/"


def deployed_version(distribution: str) -> str | None:
    found = subprocess.run(
        [
            "/opt/ckpt-eval/venv/bin/python",
            "-c",
            "import importlib.metadata as m, sys\n"
            "try: print(m.version(sys.argv[1]))\nexcept m.PackageNotFoundError: pass",
            distribution,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return found or None


def deployed_value(module: str) -> str:
    return subprocess.run(
        ["/opt/ckpt-eval/venv/bin/python", "-c", f"import {module}; print({module}.VALUE)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@needs_root
def test_plugins_from_wheels_and_from_an_index_are_installed_once(first_deploy: PlaybookRun, tmp_path: Path) -> None:
    assert first_deploy.returncode == 0
    wheels = [
        build_wheel(tiny_project(tmp_path / "wheel-src", "ckpt-eval-tiny-wheel", "1.0", "first"), tmp_path / "w1")
    ]
    if SONAR_PLUGIN.is_dir():
        wheels.append(build_wheel(SONAR_PLUGIN, tmp_path / "sonar"))
    index_wheels = [
        build_wheel(tiny_project(tmp_path / f"index-src-{v}", "ckpt-eval-tiny-index", v, v), tmp_path / f"i{v}")
        for v in ("1.0", "2.0")
    ]
    index_url = simple_index(tmp_path / "index", index_wheels)
    variables = tmp_path / "vars.json"

    def deploy(*args: str, **extra: object) -> PlaybookRun:
        variables.write_text(
            json.dumps(
                {
                    "classifier_plugin_wheels": [str(wheel) for wheel in wheels],
                    "classifier_plugin_packages": ["ckpt-eval-tiny-index==1.0"],
                    "classifier_plugin_index_url": index_url,
                    **extra,
                }
            )
        )
        return ansible_playbook(*args, "playbooks/deploy.yml", "-e", f"@{variables}")

    try:
        installed = deploy()
        assert installed.returncode == 0, installed.output[-5000:]
        assert deployed_version("ckpt-eval-tiny-wheel") == "1.0"
        assert deployed_value("ckpt_eval_tiny_wheel") == "first"
        assert deployed_version("ckpt-eval-tiny-index") == "1.0"
        assert Path("/opt/ckpt-eval/plugins/ckpt_eval_tiny_wheel-1.0-py3-none-any.whl").is_file()
        if SONAR_PLUGIN.is_dir():
            listed = subprocess.run(
                ["/opt/ckpt-eval/venv/bin/ckpt-eval", "architectures", "--format", "json"],
                capture_output=True,
                text=True,
                check=True,
            )
            sonar = [a for a in json.loads(listed.stdout)["architectures"] if a["package"] == "ckpt-eval-sonar"]
            assert [(a["name"], a["status"]) for a in sonar] == [("sonar_mlp", "ok")]
            assert "sonar_mlp" in installed.output, "the deployment lists the architectures it installed"
        # torch is still the pinned one: plugins are installed with the app's constraints.
        assert deployed_version("torch").startswith("2.13.0")

        again = deploy()
        assert again.returncode == 0, again.output[-5000:]
        assert again.changed() == {"localhost": 0}, again.output[-5000:]
        check = deploy("--check", "--diff")
        assert check.returncode == 0, check.output[-5000:]
        assert check.changed() == {"localhost": 0}, check.output[-5000:]

        # A new version from the index, and a wheel rebuilt under the same version: both replace the installed ones.
        wheels[0].unlink()
        wheels[0] = build_wheel(
            tiny_project(tmp_path / "wheel-src-2", "ckpt-eval-tiny-wheel", "1.0", "rebuilt"), tmp_path / "w2"
        )
        upgraded = deploy(classifier_plugin_packages=["ckpt-eval-tiny-index==2.0"])
        assert upgraded.returncode == 0, upgraded.output[-5000:]
        assert deployed_version("ckpt-eval-tiny-index") == "2.0"
        assert deployed_value("ckpt_eval_tiny_wheel") == "rebuilt"
        settled = deploy(classifier_plugin_packages=["ckpt-eval-tiny-index==2.0"])
        assert settled.changed() == {"localhost": 0}, settled.output[-5000:]

        # An index without the requirement fails the deployment, naming it.
        missing = deploy(classifier_plugin_packages=["ckpt-eval-tiny-index==9.9"])
        assert missing.returncode != 0
        assert "ckpt-eval-tiny-index==9.9" in missing.output
    finally:
        subprocess.run(
            [
                "/opt/ckpt-eval/venv/bin/pip",
                "uninstall",
                "--yes",
                "--quiet",
                "ckpt-eval-tiny-wheel",
                "ckpt-eval-tiny-index",
            ],
            check=False,
            capture_output=True,
        )
        for leftover in Path("/opt/ckpt-eval/plugins").glob("ckpt_eval_tiny_*.whl"):
            leftover.unlink()


def test_demo_csv_is_what_make_demo_data_writes() -> None:
    """The committed rows come from scikit-learn's embedded data: the script reproduces them exactly."""
    result = subprocess.run(
        [sys.executable, "scripts/make_demo_data.py", "--check"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    header, *rows = DEMO_CSV.read_text().splitlines()
    columns = header.split(",")
    assert (columns[0], columns[-1], len(columns)) == ("sample_id", "diagnosis", 32)
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", column) for column in columns)
    assert all(int(row.split(",")[0]) % 4 == 0 for row in rows), "the test split of the built-in dataset"
    assert {row.rsplit(",", 1)[1] for row in rows} == {"malignant", "benign"}


@needs_root
def test_a_declared_checkpoint_that_cannot_be_registered_fails_the_deploy_with_the_reason(
    first_deploy: PlaybookRun, tmp_path: Path
) -> None:
    assert first_deploy.returncode == 0
    declared = {
        "classifier_checkpoints": [
            {"name": "no-such-pair", "path": "digits-mlp-good.pt", "arch": "digits_mlp", "datasets": ["no_such_set"]}
        ]
    }
    (tmp_path / "vars.json").write_text(json.dumps(declared))
    refused = ansible_playbook("playbooks/deploy.yml", "-e", f"@{tmp_path / 'vars.json'}")
    assert refused.returncode != 0
    assert "no_such_set" in refused.output
    assert superuser_sql("SELECT count(*) FROM ckpt_eval.checkpoints WHERE name = 'no-such-pair'").strip() == "0"
    for secret in demo_secrets():
        assert secret not in refused.output
