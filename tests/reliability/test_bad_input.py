"""Bad input catalogue: every kind of hostile or broken input, its error, its exit code, and that nothing
is lost for the other checkpoints of the same run.

Three families, each one row of the scenario table per kind of input:

- process-level (the vault, its password, the decrypted YAML): the job stops before it touches the
  database with one line on stderr and the documented exit code, and claims nothing, so the next run
  evaluates everything; a usable variant (padded password file, readable password file) still works;
- checkpoint-level (registry rows, checkpoint files, IDX datasets): one real ``ckpt-eval run`` per
  case; the hostile checkpoint gets a failed run whose ``error`` says why, and the two demo checkpoints
  still get their run in the same process (exit 3: the undertrained demo fails its gate);
- rows the database itself refuses to store (NUL, non-UTF-8, over-long paths): such a row cannot exist.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
import yaml

from ckpt_eval.architectures import build_model
from ckpt_eval.datasets import write_idx
from tests.support.deployment import APP_PASSWORD, VAULT_PASSWORD, Deployment, Result

DEMO_VERDICTS = {"digits-mlp-good": "pass", "digits-mlp-undertrained": "fail"}
GOOD_FILE = "digits-mlp-good.pt"
UNDERTRAINED_FILE = "digits-mlp-undertrained.pt"
METRIC_ROWS_PER_RUN = 6 + 4 * 10  # overall metrics + precision/recall/f1/support per class
SECRETS = (VAULT_PASSWORD, APP_PASSWORD)


# --------------------------------------------------------------------------- helpers


def query(deployment: Deployment, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with deployment.superuser() as conn:
        return conn.execute(sql, params or None).fetchall()  # type: ignore[arg-type]


def timed_run(deployment: Deployment, *args: str) -> tuple[Result, float]:
    started = time.monotonic()
    result = deployment.ckpt_eval("run", *args)
    return result, time.monotonic() - started


def assert_no_secret(result: Result) -> None:
    for secret in SECRETS:
        assert secret not in result.output


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- process-level cases


def flip_one_hex_char(vaulttext: str) -> str:
    """Change one hex digit in the ciphertext to another hex digit.

    The file body is the hex of ``salt_hex \\n hmac_hex \\n ciphertext_hex``. Changing the low nibble of one
    pair keeps every inner character a hex digit, so the envelope stays well-formed and only the HMAC can
    notice: exactly one character of the file differs.
    """
    header, *lines = vaulttext.strip().splitlines()
    body = "".join(lines)
    salt, hmac, ciphertext = bytes.fromhex(body).split(b"\n")
    index = 2 * (len(salt) + 1 + len(hmac) + 1 + len(ciphertext) // 2) + 1
    chars = list(body)
    chars[index] = "2" if chars[index] == "1" else "1"  # '3x'/'6x' pairs stay a digit / a-f letter
    flipped = "".join(chars)
    out_lines, start = [], 0
    for line in lines:
        out_lines.append(flipped[start : start + len(line)])
        start += len(line)
    result = "\n".join([header, *out_lines]) + "\n"
    assert sum(a != b for a, b in zip(vaulttext.strip() + "\n", result, strict=True)) == 1
    bytes.fromhex(bytes.fromhex(flipped).split(b"\n")[2].decode())  # still hex inside
    return result


def rewrite_credentials(transform: Callable[[str], str]) -> Callable[[Deployment], None]:
    def prepare(deployment: Deployment) -> None:
        deployment.credentials.write_text(transform(deployment.credentials.read_text()))

    return prepare


def plaintext_credentials(deployment: Deployment) -> None:
    data = {
        "host": "127.0.0.1",
        "port": deployment.cluster.port,
        "dbname": deployment.dbname,
        "user": "ckpt_eval_app",
        "password": APP_PASSWORD,
    }
    deployment.credentials.write_text(yaml.safe_dump(data))


def password_file(content: str, mode: int = 0o600) -> Callable[[Deployment], None]:
    def prepare(deployment: Deployment) -> None:
        deployment.password_file.write_text(content)
        deployment.password_file.chmod(mode)

    return prepare


def environment_password(value: str) -> Callable[[Deployment], None]:
    def prepare(deployment: Deployment) -> None:
        env = {k: v for k, v in deployment.env.items() if k != "CKPT_EVAL_VAULT_PASSWORD_FILE"}
        env["ANSIBLE_VAULT_PASSWORD"] = value
        deployment.env = env

    return prepare


def credentials_with(**overrides: object) -> Callable[[Deployment], None]:
    def prepare(deployment: Deployment) -> None:
        deployment.write_credentials(**overrides)

    return prepare


@dataclass(frozen=True)
class ProcessCase:
    prepare: Callable[[Deployment], None]
    exit_code: int
    fragment: str  # in the one stderr line of a refusal; in a warning when the run works (exit 3)


PROCESS_CASES = {
    # db.credentials itself
    "vault-one-hex-char-flipped": ProcessCase(
        rewrite_credentials(flip_one_hex_char), 77, "wrong vault password (or the file was tampered with)"
    ),
    "vault-truncated": ProcessCase(
        rewrite_credentials(lambda text: text[: len(text) // 2]), 78, "not a valid ansible-vault file (corrupted"
    ),
    "vault-plaintext": ProcessCase(plaintext_credentials, 78, "not ansible-vault encrypted; refusing plaintext"),
    "vault-empty": ProcessCase(rewrite_credentials(lambda text: ""), 78, "db.credentials is empty"),
    # the vault password
    "password-wrong": ProcessCase(password_file("not-the-vault-password\n"), 77, "wrong vault password"),
    "password-file-blank": ProcessCase(password_file(" \n\t\n"), 77, "is empty"),
    "password-env-empty": ProcessCase(environment_password(""), 77, "from ANSIBLE_VAULT_PASSWORD is empty"),
    # ANSIBLE_VAULT_PASSWORD is the password itself: only a trailing CR/LF is dropped, never spaces
    "password-env-space-padded": ProcessCase(environment_password(f"  {VAULT_PASSWORD}  "), 77, "wrong vault password"),
    "password-env-crlf-ended": ProcessCase(environment_password(f"{VAULT_PASSWORD}\r\n"), 3, ""),
    # a password FILE is stripped of surrounding whitespace exactly like ansible-playbook does
    "password-file-space-padded": ProcessCase(password_file(f"  {VAULT_PASSWORD}  \n\n"), 3, ""),
    "password-file-mode-644": ProcessCase(
        password_file(VAULT_PASSWORD + "\n", 0o644), 3, "is accessible by group or others (mode 644); chmod 600 it"
    ),
    # the decrypted YAML
    "yaml-missing-keys": ProcessCase(
        credentials_with(dbname=None, password=None), 78, "lack required key(s): dbname, password"
    ),
    "yaml-port-text": ProcessCase(credentials_with(port="fifty-four-thirty-two"), 78, "port must be an integer"),
    "yaml-port-boolean": ProcessCase(credentials_with(port=True), 78, "port must be an integer"),
    "yaml-user-number": ProcessCase(credentials_with(user=12345), 78, "user must be a string"),
    "yaml-host-list": ProcessCase(credentials_with(host=["127.0.0.1", "127.0.0.2"]), 78, "host must be a string"),
}


@pytest.mark.scenario(
    "Bad credentials input",
    "documented exit code, one stderr line, no Traceback/secret, nothing claimed; usable variants run",
)
@pytest.mark.parametrize("case_id", list(PROCESS_CASES))
def test_credentials_and_vault_password(deployment: Deployment, figure, case_id: str) -> None:
    case = PROCESS_CASES[case_id]
    case.prepare(deployment)
    result, seconds = timed_run(deployment)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode == 3:
        figure(f"exit 3 in {seconds:.1f} s" + (" + warning" if case.fragment else ""))
    else:
        figure(f"exit {result.returncode} in {seconds:.1f} s: {lines[-1].split(': ', 1)[-1][:90] if lines else '-'}")
    assert result.returncode == case.exit_code, result.output
    assert "Traceback" not in result.output
    assert_no_secret(result)
    runs = dict(query(deployment, "SELECT checkpoint_name, count(*) FROM ckpt_eval.evaluation_runs GROUP BY 1"))
    if case.exit_code == 3:  # the input is usable: the job runs as normal
        assert runs == dict.fromkeys(DEMO_VERDICTS, 1), result.output
        if case.fragment:
            assert case.fragment in result.stderr
        else:
            assert "WARNING" not in result.stderr, result.stderr
            assert "ERROR" not in result.stderr, result.stderr
        figure("2 runs")
        return
    assert len(lines) == 1, result.stderr
    assert case.fragment in lines[0]
    assert result.stdout == ""
    assert runs == {}
    states = query(deployment, "SELECT status, attempt, lease_owner FROM ckpt_eval.evaluations")
    assert states == [("pending", 0, None)] * len(DEMO_VERDICTS), "a refused start must claim nothing"


# --------------------------------------------------------------------------- checkpoint-level cases


@dataclass(frozen=True)
class Expect:
    """What one hostile registry row must end as: its run's status and verdict, and a regex in its error
    (or, for a run that succeeded, in its verdict reasons)."""

    name: str
    pattern: str
    status: str = "failed"
    verdict: str = "fail"


@dataclass(frozen=True)
class CheckpointCase:
    setup: Callable[[Deployment, Path], list[Expect]]
    check: Callable[[Deployment, Path, Result], str] | None = field(default=None)  # returns a figure


def copy_demo(deployment: Deployment, source: str, target: str) -> Path:
    path = deployment.checkpoint_root / target
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((deployment.checkpoint_root / source).read_bytes())
    return path


def demo_state_dict(deployment: Deployment) -> dict[str, torch.Tensor]:
    return torch.load(deployment.checkpoint_root / GOOD_FILE, weights_only=True)


def unknown_arch(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    deployment.register_row("odd-arch", GOOD_FILE, arch="resnet9000")
    return [Expect("odd-arch", r"unknown architecture 'resnet9000' \(installed: [^)]*digits_mlp, fashion_cnn")]


def unknown_dataset(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    deployment.register_row("odd-dataset", GOOD_FILE, dataset="imagenet")
    return [Expect("odd-dataset", re.escape("dataset 'imagenet' is not registered"))]


def missing_file(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    deployment.register_row("retired", "retired/digits-mlp-v0.pt")
    return [Expect("retired", re.escape("'retired/digits-mlp-v0.pt' not found under the checkpoint root"))]


def empty_file(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    (deployment.checkpoint_root / "empty.pt").write_bytes(b"")
    deployment.register_row("empty", "empty.pt")
    return [Expect("empty", re.escape("checkpoint 'empty.pt' is empty"))]


def truncated_file(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    data = (deployment.checkpoint_root / GOOD_FILE).read_bytes()
    (deployment.checkpoint_root / "truncated.pt").write_bytes(data[: len(data) // 2])
    deployment.register_row("truncated", "truncated.pt")
    return [Expect("truncated", r"'truncated\.pt' (is not a valid archive|refused: not a readable PyTorch checkpoint)")]


def text_file(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    (deployment.checkpoint_root / "notes.pt").write_text("this is not a checkpoint: upload the real weights\n")
    deployment.register_row("notes", "notes.pt")
    return [Expect("notes", r"'notes\.pt' refused: (not a readable PyTorch checkpoint|it is not a plain tensor)")]


def wrong_shapes(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    torch.manual_seed(0)
    torch.save(build_model("fashion_cnn").state_dict(), deployment.checkpoint_root / "fashion-cnn.pt")
    deployment.register_row("cnn-as-mlp", "fashion-cnn.pt", arch="digits_mlp")
    return [Expect("cnn-as-mlp", re.escape("checkpoint 'fashion-cnn.pt' does not fit architecture digits_mlp"))]


def nan_weights(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    state = demo_state_dict(deployment)
    state["layers.3.bias"][3] = float("nan")  # one logit NaN for every sample
    torch.save(state, deployment.checkpoint_root / "nan.pt")
    deployment.register_row("nan-weights", "nan.pt")
    # A gate of 0/0: accuracy and F1 cannot fail it, so only the NaN can make the verdict 'fail'.
    deployment.sql("UPDATE ckpt_eval.checkpoints SET min_accuracy = 0, min_f1_macro = 0 WHERE name = 'nan-weights'")
    return [Expect("nan-weights", r"\bloss is nan\b", status="succeeded", verdict="fail")]


def check_nan(deployment: Deployment, tmp_path: Path, result: Result) -> str:
    [(loss, accuracy)] = query(
        deployment, "SELECT loss, accuracy FROM ckpt_eval.latest_evaluations WHERE checkpoint_name = 'nan-weights'"
    )
    assert isinstance(loss, float), loss
    assert math.isnan(loss), f"loss must be stored as NaN, got {loss!r}"
    outcome = next(o for o in json.loads(result.stdout)["evaluated"] if o["name"] == "nan-weights")
    assert outcome["loss"] is None  # JSON has no NaN: null
    return f"loss NaN stored, accuracy {accuracy:.3f} >= gate 0, verdict fail"


class CodeExecution:
    """Unpickling this runs a shell command (the classic pickle payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def pickle_payload(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    # The payload is live: plain pickle runs it (with another marker, so the real one stays meaningful).
    proof = tmp_path / "payload-is-live"
    pickle.loads(pickle.dumps(CodeExecution(proof)))
    assert proof.exists()
    marker = tmp_path / "payload-ran"
    torch.save({"layers.1.weight": CodeExecution(marker)}, deployment.checkpoint_root / "payload.pt")
    deployment.register_row("payload", "payload.pt")
    return [Expect("payload", re.escape("'payload.pt' refused: it is not a plain tensor state dict"))]


def check_payload(deployment: Deployment, tmp_path: Path, result: Result) -> str:
    assert not (tmp_path / "payload-ran").exists(), "the pickled payload must never execute"
    return "marker file never created"


def sha256_mismatch(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    path = copy_demo(deployment, GOOD_FILE, "swapped.pt")
    deployment.register_row("swapped", "swapped.pt")
    deployment.sql(f"UPDATE ckpt_eval.checkpoints SET sha256 = '{sha256_of(path)}' WHERE name = 'swapped'")
    copy_demo(deployment, UNDERTRAINED_FILE, "swapped.pt")  # a valid checkpoint, but not the registered one
    return [
        Expect("swapped", r"'swapped\.pt': sha256 mismatch \(registry [0-9a-f]{12}\.\.\., file [0-9a-f]{12}\.\.\.\)")
    ]


def absolute_path(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    inside = str(deployment.checkpoint_root / GOOD_FILE)  # absolute, even though it points inside the root
    deployment.register_row("absolute", inside)
    return [Expect("absolute", re.escape("is absolute; paths are relative to the root"))]


def dotdot_path(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    (deployment.checkpoint_root / "sub").mkdir()
    deployment.register_row("dotdot", "sub/../digits-mlp-good.pt")  # would resolve inside the root: still refused
    return [Expect("dotdot", re.escape("'sub/../digits-mlp-good.pt' contains '..'"))]


LONG_PATH = "/".join(["d" * 99] * 9) + "/" + "x" * 97 + ".pt"


def long_nested_path(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    assert len(LONG_PATH) == 1000
    deployment.register_row("long-path", LONG_PATH)
    return [Expect("long-path", r"^checkpoint 'd{99}/d{20}\.\.\.' not found under the checkpoint root$")]


def check_long_path(deployment: Deployment, tmp_path: Path, result: Result) -> str:
    [(error,)] = query(deployment, "SELECT error FROM ckpt_eval.evaluation_runs WHERE checkpoint_name = 'long-path'")
    assert len(error) < 200
    return f"1,000-char path -> {len(error)}-char error"


LOOKALIKE = "digits-mlp-g\u03bfod.pt"  # Greek small omicron instead of 'o'


def lookalike_path(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    deployment.register_row("lookalike", LOOKALIKE)
    # The look-alike does not resolve to the real file; the error names the path exactly as stored.
    return [Expect("lookalike", re.escape(f"checkpoint '{LOOKALIKE}' not found under the checkpoint root"))]


def symlink_out(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / GOOD_FILE).write_bytes((deployment.checkpoint_root / GOOD_FILE).read_bytes())
    (deployment.checkpoint_root / "shared").symlink_to(outside, target_is_directory=True)
    deployment.register_row("via-symlink", f"shared/{GOOD_FILE}")
    return [Expect("via-symlink", re.escape("leaves the checkpoint root (symlink)"))]


IDX_IMAGES = 64


def fashion_idx(
    mutate: Callable[[Path, Path], str], images: np.ndarray | None = None, labels: np.ndarray | None = None
) -> Callable[[Deployment, Path], list[Expect]]:
    """A case: a fashion_cnn checkpoint registered for fashion_mnist, over IDX files made bad on purpose."""

    def setup(deployment: Deployment, tmp_path: Path) -> list[Expect]:
        rng = np.random.default_rng(7)
        folder = deployment.data_dir / "fashion_mnist"
        image_path = folder / "t10k-images-idx3-ubyte"
        label_path = folder / "t10k-labels-idx1-ubyte"
        write_idx(image_path, rng.integers(0, 256, (IDX_IMAGES, 28, 28)) if images is None else images)
        write_idx(label_path, rng.integers(0, 10, IDX_IMAGES) if labels is None else labels)
        pattern = mutate(image_path, label_path)
        torch.manual_seed(0)
        torch.save(build_model("fashion_cnn").state_dict(), deployment.checkpoint_root / "fashion.pt")
        deployment.register_row("fashion", "fashion.pt", arch="fashion_cnn", dataset="fashion_mnist")
        return [Expect("fashion", pattern)]

    return setup


def idx_wrong_magic(images: Path, labels: Path) -> str:
    data = bytearray(images.read_bytes())
    data[:4] = struct.pack(">I", 0x00000903)  # signed bytes instead of unsigned
    images.write_bytes(bytes(data))
    return re.escape("wrong IDX magic 0x00000903, expected 0x00000803")


def idx_truncated(images: Path, labels: Path) -> str:
    data = images.read_bytes()
    images.write_bytes(data[:-100])
    return re.escape(f"dimensions {IDX_IMAGES}x28x28 need {len(data)} bytes, file has {len(data) - 100}")


def idx_unchanged(pattern: str) -> Callable[[Path, Path], str]:
    return lambda images, labels: pattern


LABELS_OUT_OF_RANGE = np.array([i % 10 for i in range(IDX_IMAGES - 1)] + [42])


def sql_looking(deployment: Deployment, tmp_path: Path) -> list[Expect]:
    good_name = "x'); DROP TABLE ckpt_eval.evaluation_runs; --"
    bad_name = "Robert'); DELETE FROM ckpt_eval.checkpoints; --"
    bad_path = "'; TRUNCATE ckpt_eval.evaluation_metrics; --.pt"
    deployment.register_row(good_name, GOOD_FILE)
    deployment.register_row(bad_name, bad_path)
    return [
        Expect(good_name, "", status="succeeded", verdict="pass"),
        Expect(bad_name, re.escape(f"checkpoint '{bad_path}' not found under the checkpoint root")),
    ]


def check_sql_looking(deployment: Deployment, tmp_path: Path, result: Result) -> str:
    names = {name for (name,) in query(deployment, "SELECT name FROM ckpt_eval.checkpoints")}
    assert "x'); DROP TABLE ckpt_eval.evaluation_runs; --" in names
    assert "Robert'); DELETE FROM ckpt_eval.checkpoints; --" in names
    assert len(names) == 4
    tables = query(
        deployment,
        "SELECT to_regclass('ckpt_eval.evaluation_runs') IS NOT NULL, to_regclass('ckpt_eval.evaluation_metrics') "
        "IS NOT NULL, (SELECT count(*) FROM ckpt_eval.evaluation_metrics)",
    )
    assert tables == [(True, True, 3 * METRIC_ROWS_PER_RUN)]
    reported = {o["name"] for o in json.loads(result.stdout)["evaluated"]}
    assert names <= reported  # reported verbatim in the job's JSON
    return "4 rows, 4 runs, 138 metric rows: tables intact"


CHECKPOINT_CASES = {
    "unknown-arch": CheckpointCase(unknown_arch),
    "unknown-dataset": CheckpointCase(unknown_dataset),
    "checkpoint-missing": CheckpointCase(missing_file),
    "checkpoint-empty": CheckpointCase(empty_file),
    "checkpoint-truncated": CheckpointCase(truncated_file),
    "checkpoint-text": CheckpointCase(text_file),
    "checkpoint-wrong-shapes": CheckpointCase(wrong_shapes),
    "checkpoint-nan-weights": CheckpointCase(nan_weights, check_nan),
    "checkpoint-pickle-payload": CheckpointCase(pickle_payload, check_payload),
    "checkpoint-sha256-mismatch": CheckpointCase(sha256_mismatch),
    "path-absolute": CheckpointCase(absolute_path),
    "path-dotdot": CheckpointCase(dotdot_path),
    "path-1000-chars-nested": CheckpointCase(long_nested_path, check_long_path),
    "path-unicode-lookalike": CheckpointCase(lookalike_path),
    "path-symlink-out-of-root": CheckpointCase(symlink_out),
    "idx-wrong-magic": CheckpointCase(fashion_idx(mutate=idx_wrong_magic)),
    "idx-wrong-dimensions": CheckpointCase(
        fashion_idx(
            images=np.zeros((IDX_IMAGES, 20, 20)),
            mutate=idx_unchanged(re.escape("images are 20x20, fashion_mnist needs 28x28")),
        )
    ),
    "idx-wrong-count": CheckpointCase(
        fashion_idx(
            labels=np.zeros(IDX_IMAGES - 4),
            mutate=idx_unchanged(rf"fashion_mnist: {IDX_IMAGES} images in .* but {IDX_IMAGES - 4} labels in "),
        )
    ),
    "idx-truncated": CheckpointCase(fashion_idx(mutate=idx_truncated)),
    "idx-label-out-of-range": CheckpointCase(
        fashion_idx(labels=LABELS_OUT_OF_RANGE, mutate=idx_unchanged(re.escape("label 42 is out of range 0..9")))
    ),
    "sql-looking-name-and-path": CheckpointCase(sql_looking, check_sql_looking),
}


@pytest.mark.scenario(
    "Bad checkpoint input",
    "its own run fails with the reason recorded; both demo checkpoints still evaluated in that run; exit 3",
)
@pytest.mark.parametrize("case_id", list(CHECKPOINT_CASES))
def test_bad_checkpoint_input(deployment: Deployment, tmp_path: Path, figure, case_id: str) -> None:
    case = CHECKPOINT_CASES[case_id]
    expected = case.setup(deployment, tmp_path)
    result, seconds = timed_run(deployment, "--format", "json")
    figure(f"exit {result.returncode} in {seconds:.1f} s")
    assert result.returncode == 3, result.output
    assert "Traceback" not in result.output
    runs = query(
        deployment,
        "SELECT checkpoint_name, status, verdict, coalesce(error, ''), coalesce(verdict_reasons, '') "
        "FROM ckpt_eval.evaluation_runs ORDER BY run_id",
    )
    by_name: dict[str, list[tuple[object, ...]]] = {}
    for name, *rest in runs:
        by_name.setdefault(str(name), []).append(tuple(rest))
    # Nothing lost: each demo checkpoint got exactly one run in this same process, with its usual verdict.
    for name, verdict in DEMO_VERDICTS.items():
        assert [run[:3] for run in by_name.get(name, [])] == [("succeeded", verdict, "")], runs
    assert len(runs) == len(DEMO_VERDICTS) + len(expected), runs
    shown = []
    for expect in expected:
        [(status, verdict, error, reasons)] = by_name[expect.name]
        assert (status, verdict) == (expect.status, expect.verdict), (expect.name, status, verdict, error, reasons)
        text = str(error if status == "failed" else reasons)
        assert re.search(expect.pattern, text), f"{expect.name}: {text!r} does not match {expect.pattern!r}"
        assert "\n" not in text
        if text:
            text = text.replace(str(deployment.workdir), "<host>")
            shown.append(text if len(text) <= 90 else text[:87] + "...")
    # Every row ended: no lease left behind, nothing still pending.
    states = query(deployment, "SELECT DISTINCT status FROM ckpt_eval.evaluations WHERE lease_owner IS NOT NULL")
    assert states == []
    pending = query(
        deployment, "SELECT checkpoint_name FROM ckpt_eval.evaluations WHERE status NOT IN ('done', 'failed')"
    )
    assert pending == []
    reported = {o["name"]: o for o in json.loads(result.stdout)["evaluated"]}
    assert set(reported) == set(by_name)
    extra = case.check(deployment, tmp_path, result) if case.check else ""
    figure(" | ".join(shown) + (f"; {extra}" if extra else ""))


# --------------------------------------------------------------------------- rows the database refuses


@dataclass(frozen=True)
class RefusedRow:
    statement: bytes
    error: type[psycopg.Error]
    message: str


INSERT = (
    b"INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset, sha256) "
    b"VALUES ('hostile', %s, 'digits_mlp', 'digits', repeat('0', 64))"
)

REFUSED_ROWS = {
    # E'\000' asks the server itself for a NUL: PostgreSQL text cannot hold one
    "path-nul-byte": RefusedRow(
        INSERT % b"E'digits-mlp-good.pt\\000.pt'",
        psycopg.errors.CharacterNotInRepertoire,
        'invalid byte sequence for encoding "UTF8": 0x00',
    ),
    "path-5000-chars": RefusedRow(
        INSERT % b"repeat('a', 4997) || '.pt'", psycopg.errors.CheckViolation, "checkpoints_path_check"
    ),
    # raw Latin-1 bytes sent as they are (the query is bytes): the UTF8 database verifies its input
    "path-non-utf8": RefusedRow(
        INSERT % b"'caf\xe9-\xff\xfe.pt'",
        psycopg.errors.CharacterNotInRepertoire,
        'invalid byte sequence for encoding "UTF8": 0xe9',
    ),
}


@pytest.mark.scenario("Unstorable registry row", "the database refuses the INSERT: such a row cannot exist")
@pytest.mark.parametrize("case_id", list(REFUSED_ROWS))
def test_database_refuses_unstorable_paths(deployment: Deployment, figure, case_id: str) -> None:
    case = REFUSED_ROWS[case_id]
    with deployment.superuser() as conn, pytest.raises(case.error) as refused:
        conn.execute(case.statement)
    assert case.message in str(refused.value)
    assert query(deployment, "SELECT count(*) FROM ckpt_eval.checkpoints WHERE name = 'hostile'") == [(0,)]
    # the client library refuses a NUL parameter before the server is even asked
    if case_id == "path-nul-byte":
        with deployment.superuser() as conn, pytest.raises(psycopg.DataError, match="NUL"):
            conn.execute(INSERT, ("digits-mlp-good.pt\x00.pt",))
    figure(f"SQLSTATE {refused.value.sqlstate}: {str(refused.value).splitlines()[0][:80]}")
