"""ckpt-eval on a cluster that already exists (greenplum_manage_cluster: false), through the real
ansible-playbook: a PostgreSQL server made by a superuser (the "administrators"), which the playbooks
reach over TCP as an administrative role with CREATEROLE and CREATEDB only, and must never restart.

The inventory is the example in inventories/existing-greenplum/ (its group_vars verbatim, its
vault-password.sh), with a vault file made here and overrides that point it at this server and at
classifier paths of its own (never /opt/ckpt-eval, /etc/ckpt-eval or the ckpt-eval user). The tests
run in order: each builds on the state the previous one left, as an operator's session would."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml

from ckpt_eval.credentials import encrypt_mapping
from tests.support.pgcluster import PgCluster

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE = REPO / "inventories" / "existing-greenplum"
VAULT_PASSWORD = "existing-vault-pass-4e1d"
ADMIN_PASSWORD = "existing-admin-pass-83b0"
OWNER_PASSWORD = "existing-owner-pass-c52a"
APP_PASSWORD = "existing-app-pass-0f9e"
SECRETS = [VAULT_PASSWORD, ADMIN_PASSWORD, OWNER_PASSWORD, APP_PASSWORD]
CLASSIFIER_USER = "ckpt-eval-exist"
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)
HBA_LINE = "host  ckpt_eval  ckpt_eval_app  127.0.0.1/32  scram-sha-256"
# pg_hba "edit" works on the coordinator host as its administrator (postgres here), who cannot read this
# checkout's venv: those runs use the system Python and its psycopg2 (the other runs use psycopg 3).
EDIT = ("-e", "greenplum_pg_hba=edit", "-e", "ansible_python_interpreter=/usr/bin/python3")
ADMIN_HBA = [
    "host all ckpt_eval_admin 127.0.0.1/32 scram-sha-256",
    "host all all 127.0.0.1/32 reject",
]


@dataclass
class Run:
    returncode: int
    output: str
    changed: dict[str, int]
    failed: dict[str, int]


@dataclass
class Existing:
    server: PgCluster
    inventory: Path
    root: Path
    credentials: Path
    postmaster: tuple[str, str]

    def playbook(self, playbook: str, *args: str) -> Run:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "CKPT_EVAL_", "PG"))}
        env.update(
            PATH=f"{BIN}:{env.get('PATH', '')}",
            ANSIBLE_VAULT_PASSWORD=VAULT_PASSWORD,
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_NOCOLOR="1",
        )
        completed = subprocess.run(
            [
                BIN / "ansible-playbook",
                "-i",
                str(self.inventory / "hosts.yml"),
                "--vault-password-file",
                str(EXAMPLE / "vault-password.sh"),
                f"playbooks/{playbook}",
                *args,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        output = completed.stdout + completed.stderr
        recap = RECAP.findall(output)
        return Run(
            completed.returncode,
            output,
            {host: int(changed) for host, _, changed, _, _ in recap},
            {host: int(failed) for host, _, _, _, failed in recap},
        )

    def sql(self, query: str, dbname: str = "postgres") -> str:
        return self.server.psql(query, dbname=dbname)

    def app_connect(self, password: str = APP_PASSWORD) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.server.port,
            dbname="ckpt_eval",
            user="ckpt_eval_app",
            password=password,
            connect_timeout=5,
        )

    def started(self) -> tuple[str, str]:
        """The postmaster's pid and start time: a restart changes both."""
        pid = (self.server.datadir / "postmaster.pid").read_text().split()[0]
        return pid, self.sql("SELECT pg_postmaster_start_time()")

    def hba(self) -> str:
        return (self.server.datadir / "pg_hba.conf").read_text()


def write_inventory(directory: Path, server: PgCluster, root: Path, credentials: Path) -> None:
    (directory / "group_vars" / "all").mkdir(parents=True)
    hosts = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_become_method": "ansible.builtin.su"},
            "children": {
                "database": {"hosts": {"coordinator": {"ansible_python_interpreter": sys.executable}}},
                "classifiers": {"hosts": {"classifier1": {"ansible_python_interpreter": "/usr/bin/python3"}}},
            },
        }
    }
    (directory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    shutil.copy(EXAMPLE / "group_vars" / "all" / "main.yml", directory / "group_vars" / "all" / "main.yml")
    overrides = {
        # The "existing" server: PostgreSQL, reached over TCP; its administrator account is postgres.
        "greenplum_flavor": "postgres",
        "greenplum_postgres_version": int(server.bindir.parent.name),
        "greenplum_login_host": "127.0.0.1",
        "greenplum_port": server.port,
        "greenplum_client_addresses": ["127.0.0.1/32"],
        "greenplum_existing_config_dir": str(server.datadir),
        "greenplum_admin_user": "postgres",
        # A classifier host of its own.
        "classifier_user": CLASSIFIER_USER,
        "classifier_install_dir": str(root / "opt"),
        "classifier_config_dir": str(root / "etc"),
        "classifier_home": str(root / "home"),
        "classifier_credentials_file": str(credentials),
        "classifier_run_retry_delay": 1,
    }
    (directory / "group_vars" / "all" / "test.yml").write_text(yaml.safe_dump(overrides))
    vault = directory / "group_vars" / "all" / "vault.yml"
    vault.write_text(
        yaml.safe_dump(
            {"vault_greenplum_admin_role_password": ADMIN_PASSWORD, "vault_ckpt_eval_owner_password": OWNER_PASSWORD}
        )
    )
    password_file = directory / "vault-pass"
    password_file.write_text(VAULT_PASSWORD)
    subprocess.run(
        [BIN / "ansible-vault", "encrypt", "--vault-password-file", str(password_file), str(vault)],
        check=True,
        capture_output=True,
    )
    password_file.unlink()


def write_credentials(path: Path, port: int, password: str = APP_PASSWORD) -> None:
    data = {
        "host": "127.0.0.1",
        "port": port,
        "dbname": "ckpt_eval",
        "user": "ckpt_eval_app",
        "password": password,
        "connect_timeout": 5,
    }
    path.write_text(encrypt_mapping(data, VAULT_PASSWORD.encode()))


@pytest.fixture(scope="module")
def existing() -> Iterator[Existing]:
    if os.geteuid() != 0:
        pytest.skip("the classifier role installs a service user (root)")
    server = PgCluster()
    root = Path(tempfile.mkdtemp(prefix="ckpt-eval-existing-", dir="/tmp"))
    root.chmod(0o755)
    try:
        server.init()
        server.write_hba(ADMIN_HBA)
        server.start()
        server.wait_ready()
        # What the administrators grant: a role with CREATEROLE and CREATEDB, nothing more. And a
        # database of theirs that ckpt-eval must leave alone.
        server.psql(f"CREATE ROLE ckpt_eval_admin LOGIN CREATEROLE CREATEDB PASSWORD '{ADMIN_PASSWORD}'")
        server.psql("CREATE DATABASE theirs")
        server.psql("CREATE TABLE sales (id int PRIMARY KEY); INSERT INTO sales VALUES (1), (2)", dbname="theirs")
        inventory = root / "inventory"
        inventory.mkdir()
        credentials = root / "db.credentials"
        write_credentials(credentials, server.port)
        write_inventory(inventory, server, root, credentials)
        state = Existing(server, inventory, root, credentials, ("", ""))
        state.postmaster = state.started()
        yield state
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)
        try:
            pwd.getpwnam(CLASSIFIER_USER)
        except KeyError:
            pass
        else:
            subprocess.run(["userdel", CLASSIFIER_USER], check=False, capture_output=True)
            subprocess.run(["groupdel", CLASSIFIER_USER], check=False, capture_output=True)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def ckpt_eval_roles(existing: Existing) -> list[str]:
    out = existing.sql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'ckpt_eval%' ORDER BY 1")
    return out.split()


def test_wrong_admin_password_fails_clearly_and_changes_nothing(existing: Existing) -> None:
    run = existing.playbook("deploy.yml", "-e", "greenplum_admin_role_password=not-the-password")
    assert run.returncode != 0
    assert "Could not log in to 127.0.0.1" in run.output
    assert "as the administrative role ckpt_eval_admin" in run.output
    assert "password authentication failed" in run.output
    assert "Nothing was changed" in run.output
    assert set(run.changed.values()) == {0}, run.output[-3000:]
    assert ckpt_eval_roles(existing) == ["ckpt_eval_admin"]
    assert existing.sql("SELECT count(*) FROM pg_database WHERE datname = 'ckpt_eval'") == "0"
    assert not (existing.root / "opt").exists(), "the classifier play did not run"
    assert_no_secret(run.output)


def test_check_mode_before_the_first_deploy_shows_changes_and_makes_none(existing: Existing) -> None:
    run = existing.playbook("deploy.yml", "--check", "--diff", "--limit", "coordinator")
    assert run.returncode == 0, run.output[-5000:]
    assert run.changed["coordinator"] > 0
    assert "Create the database" in run.output
    assert HBA_LINE in run.output
    assert ckpt_eval_roles(existing) == ["ckpt_eval_admin"]
    assert existing.sql("SELECT count(*) FROM pg_database WHERE datname = 'ckpt_eval'") == "0"
    assert_no_secret(run.output)


def test_first_deploy_prints_the_pg_hba_lines_and_the_classifier_stops_with_them(existing: Existing) -> None:
    run = existing.playbook("deploy.yml")
    assert run.returncode != 0
    assert run.failed == {"coordinator": 0, "classifier1": 1}, run.output[-5000:]
    assert "ask the cluster's administrators to add these lines" in run.output
    assert HBA_LINE in run.output
    assert "classifier1 cannot use the database as the app role" in run.output, run.output[-5000:]
    assert "(ckpt-eval status exited 77)" in run.output, run.output[-5000:]
    assert "pg_hba.conf rejects connection" in run.output
    assert_no_secret(run.output)
    # The database side is in place, owned as it should be, without a superuser having touched it.
    assert ckpt_eval_roles(existing) == ["ckpt_eval_admin", "ckpt_eval_app", "ckpt_eval_owner"]
    owners = existing.sql(
        "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'ckpt_eval'",
        dbname="ckpt_eval",
    )
    assert owners == "ckpt_eval_owner"
    assert existing.sql("SELECT max(version) FROM ckpt_eval.schema_version", dbname="ckpt_eval") >= "1"
    assert existing.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'ckpt_eval'") == (
        "ckpt_eval_admin"
    )
    stored = existing.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'ckpt_eval_app'")
    assert stored.startswith("SCRAM-SHA-256$")
    assert existing.started() == existing.postmaster


def test_deploy_once_the_administrators_added_the_lines_records_results_as_the_app_role(existing: Existing) -> None:
    existing.server.write_hba([HBA_LINE, *ADMIN_HBA])
    run = existing.playbook("deploy.yml")
    assert run.returncode == 0, run.output[-5000:]
    assert "accuracy=" in run.output
    runs = existing.sql("SELECT count(DISTINCT checkpoint_id) FROM ckpt_eval.evaluation_runs", dbname="ckpt_eval")
    assert int(runs) >= 2
    with existing.app_connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("ckpt_eval_app",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM ckpt_eval.evaluation_runs")
    assert_no_secret(run.output)
    assert existing.started() == existing.postmaster


def test_second_deploy_changes_nothing(existing: Existing) -> None:
    run = existing.playbook("deploy.yml")
    assert run.returncode == 0, run.output[-5000:]
    assert run.changed == {"coordinator": 0, "classifier1": 0}, run.output[-5000:]


def test_check_diff_after_deploying_changes_nothing_and_prints_no_secret(existing: Existing) -> None:
    run = existing.playbook("deploy.yml", "--check", "--diff")
    assert run.returncode == 0, run.output[-5000:]
    assert run.changed == {"coordinator": 0, "classifier1": 0}, run.output[-5000:]
    assert_no_secret(run.output)


def test_rotated_app_password_is_set_and_used(existing: Existing) -> None:
    rotated = "existing-app-pass-rotated-77"
    write_credentials(existing.credentials, existing.server.port, rotated)
    try:
        run = existing.playbook("deploy.yml")
        assert run.returncode == 0, run.output[-5000:]
        assert run.changed["coordinator"] == 1, "only the app role's password changed"
        assert rotated not in run.output
        with existing.app_connect(rotated) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("ckpt_eval_app",)
    finally:
        write_credentials(existing.credentials, existing.server.port)
    restored = existing.playbook("deploy.yml")
    assert restored.returncode == 0, restored.output[-5000:]
    with existing.app_connect() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_edit_mode_adds_the_lines_and_reloads_without_a_restart(existing: Existing) -> None:
    existing.server.write_hba(ADMIN_HBA)
    run = existing.playbook("deploy.yml", *EDIT)
    assert run.returncode == 0, run.output[-5000:]
    hba = existing.hba()
    assert hba.startswith("# BEGIN ckpt-eval"), "ckpt-eval's lines come first, so nothing earlier shadows them"
    assert HBA_LINE in hba
    assert hba.endswith("\n".join(ADMIN_HBA) + "\n"), "the administrators' lines are kept"
    again = existing.playbook("deploy.yml", *EDIT)
    assert again.changed == {"coordinator": 0, "classifier1": 0}, again.output[-5000:]
    assert existing.started() == existing.postmaster


def test_md5_method_as_on_greenplum_6(existing: Existing) -> None:
    """Greenplum 6 has md5 only: the role sends the md5 hash itself and writes md5 pg_hba lines."""
    try:
        run = existing.playbook("deploy.yml", *EDIT, "-e", "greenplum_password_method=md5")
        assert run.returncode == 0, run.output[-5000:]
        stored = existing.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'ckpt_eval_app'")
        assert (
            stored == "md5" + hashlib.md5((APP_PASSWORD + "ckpt_eval_app").encode(), usedforsecurity=False).hexdigest()
        )
        assert HBA_LINE.replace("scram-sha-256", "md5") in existing.hba()
        again = existing.playbook("deploy.yml", *EDIT, "-e", "greenplum_password_method=md5")
        assert again.changed == {"coordinator": 0, "classifier1": 0}, again.output[-5000:]
    finally:
        back = existing.playbook("deploy.yml", *EDIT)
    assert back.returncode == 0, back.output[-5000:]
    assert existing.sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'ckpt_eval_app'").startswith("SCRAM")


def test_dataset_sources_and_the_demo_table_are_granted_by_the_administrative_role(existing: Existing) -> None:
    """A table of the administrators' own in ckpt-eval's database, and the demo table (made as the owner
    role): once listed in greenplum_dataset_sources the app role may read them, and nothing else there."""
    with psycopg.connect(
        host="127.0.0.1",
        port=existing.server.port,
        dbname="ckpt_eval",
        user="ckpt_eval_admin",
        password=ADMIN_PASSWORD,
        autocommit=True,
    ) as admin:
        admin.execute("CREATE SCHEMA lab")
        admin.execute("CREATE TABLE lab.readings (id integer PRIMARY KEY, band_01 double precision, label text)")
        admin.execute("INSERT INTO lab.readings VALUES (1, 0.5, 'R'), (2, 0.25, 'M')")
        admin.execute("CREATE TABLE lab.other (id integer PRIMARY KEY)")
    sources = ("-e", '{"greenplum_dataset_sources": ["lab.readings", "ckpt_eval_demo.breast_cancer"]}')
    demo = ("-e", "greenplum_demo_dataset=true")
    run = existing.playbook("deploy.yml", *sources, *demo)
    assert run.returncode == 0, run.output[-5000:]
    rows = len((REPO / "demo" / "breast_cancer.csv").read_text().splitlines()) - 1
    with existing.app_connect() as conn:
        assert conn.execute("SELECT count(*) FROM lab.readings").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM ckpt_eval_demo.breast_cancer").fetchone() == (rows,)
    for statement in (
        "SELECT * FROM lab.other",
        "DELETE FROM lab.readings",
        "DELETE FROM ckpt_eval_demo.breast_cancer",
    ):
        with existing.app_connect() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
    owner = existing.sql(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'ckpt_eval_demo' AND tablename = 'breast_cancer'",
        dbname="ckpt_eval",
    )
    assert owner == "ckpt_eval_owner"
    assert_no_secret(run.output)
    again = existing.playbook("deploy.yml", *sources, *demo)
    assert again.changed == {"coordinator": 0, "classifier1": 0}, again.output[-5000:]
    check = existing.playbook("deploy.yml", "--check", *sources, *demo)
    assert check.changed == {"coordinator": 0, "classifier1": 0}, check.output[-5000:]


def test_uninstall_without_confirmation_changes_nothing(existing: Existing) -> None:
    run = existing.playbook("uninstall.yml")
    assert run.returncode != 0
    assert "-e ckpt_eval_uninstall=ckpt_eval" in run.output
    assert set(run.changed.values()) == {0}
    assert ckpt_eval_roles(existing) == ["ckpt_eval_admin", "ckpt_eval_app", "ckpt_eval_owner"]


def test_uninstall_removes_ckpt_eval_and_nothing_else(existing: Existing) -> None:
    run = existing.playbook("uninstall.yml", "-e", "ckpt_eval_uninstall=ckpt_eval", *EDIT)
    assert run.returncode == 0, run.output[-5000:]
    assert_no_secret(run.output)
    assert ckpt_eval_roles(existing) == ["ckpt_eval_admin"]
    assert existing.sql("SELECT count(*) FROM pg_database WHERE datname = 'ckpt_eval'") == "0"
    assert existing.sql("SELECT count(*) FROM sales", dbname="theirs") == "2"
    assert "ckpt-eval" not in existing.hba()
    assert existing.hba().endswith("\n".join(ADMIN_HBA) + "\n")
    again = existing.playbook("uninstall.yml", "-e", "ckpt_eval_uninstall=ckpt_eval", *EDIT)
    assert again.returncode == 0, again.output[-5000:]
    assert again.changed == {"coordinator": 0}, again.output[-5000:]
    assert existing.started() == existing.postmaster, "the server was never restarted"


# -- the example inventory itself (no server needed) ------------------------------------------------


def example_playbook(*args: str, vault_password: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "CKPT_EVAL_"))}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", ANSIBLE_VAULT_PASSWORD=vault_password, ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [
            BIN / "ansible-playbook",
            "-i",
            "inventories/existing-greenplum/hosts.yml",
            "--vault-password-file",
            "inventories/existing-greenplum/vault-password.sh",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize("playbook", ["deploy.yml", "evaluate.yml", "uninstall.yml"])
def test_example_inventory_passes_the_syntax_check(playbook: str) -> None:
    result = example_playbook("--syntax-check", f"playbooks/{playbook}", vault_password="x")
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_inventory_with_the_demo_credentials_stops_before_any_change() -> None:
    demo = (REPO / "inventories" / "local" / "vault-password").read_text().strip()
    result = example_playbook("playbooks/deploy.yml", vault_password=demo)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "public demo vault password" in output
    assert "UNREACHABLE" not in output
    assert "Log in to the coordinator" not in output, "the database was not contacted"
