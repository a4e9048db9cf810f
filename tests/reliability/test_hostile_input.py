"""Hostile input, class by class: every case through the real CLI against a real database.

- Hostile checkpoints: parsed in an isolated process bounded in wall time, CPU time and memory;
  each fails only its own run with the bound it hit, the demo checkpoints are evaluated in the
  same process, the worker's own memory stays small and its lease stays alive.
- Untrusted text: registry values, file names, state-dict keys, refused pickle globals and
  safetensors headers carrying terminal control sequences never reach stdout or stderr raw, in any
  output format.
- Flags: NaN, infinities and values the server would refuse are usage errors (exit 2).
- Secret sources: devices, FIFOs, directories, huge files, endless or never-closed stdin fail fast.
- The recorded sha256 is required: a row without one fails its run and never loads its file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from ckpt_eval.architectures import build_model
from tests.support import hostile
from tests.support.deployment import CKPT_EVAL, Deployment, Result

DEMO_VERDICTS = {"digits-mlp-good": "pass", "digits-mlp-undertrained": "fail"}
GOOD_FILE = "digits-mlp-good.pt"
MiB = 1024**2
TIGHT_LIMITS = {"CKPT_EVAL_LOAD_CPU_SECONDS": "2", "CKPT_EVAL_LOAD_TIMEOUT": "20", "CKPT_EVAL_LOAD_MEMORY_MB": "256"}
# Characters that drive a terminal or hide text: C0 controls but newline, DEL, C1 controls, bidi and
# zero-width format characters, line/paragraph separators.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


@dataclass
class Measured:
    result: Result
    seconds: float
    max_rss_mb: float  # the worker's own peak (VmHWM), sampled while it runs
    parser_rss_mb: float  # the largest peak of any process it started (the checkpoint parser)


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except (OSError, ValueError):
        pass
    return found


def run_measured(
    deployment: Deployment, *args: str, env: dict[str, str] | None = None, stdin: int | None = None
) -> Measured:
    """Run the real CLI; wall time, and the peak RSS of the worker and of its children (sampled)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [CKPT_EVAL, *args],
        cwd=deployment.workdir,
        env={**deployment.env, **(env or {})},
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    peaks = {"worker": 0.0, "children": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks["worker"] = max(peaks["worker"], _peak_rss_mb(process.pid))
            for child in _children(process.pid):
                peaks["children"] = max(peaks["children"], _peak_rss_mb(child))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate(timeout=900)
    done.set()
    sampler.join()
    seconds = time.monotonic() - started
    result = Result(process.returncode, stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))
    return Measured(result, seconds, peaks["worker"], peaks["children"])


def runs_by_name(deployment: Deployment) -> dict[str, list[tuple[str, str, str]]]:
    with deployment.superuser() as conn:
        rows = conn.execute(
            "SELECT checkpoint_name, status, verdict, coalesce(error, '') "
            "FROM ckpt_eval.evaluation_runs ORDER BY run_id"
        ).fetchall()
    found: dict[str, list[tuple[str, str, str]]] = {}
    for name, *rest in rows:
        found.setdefault(name, []).append(tuple(rest))  # type: ignore[arg-type]
    return found


def assert_no_raw_control(text: str) -> None:
    found = RAW_CONTROL.search(text)
    assert found is None, f"raw control character {found.group()!r} at {found.start()}: {text[: found.start() + 40]!r}"


def digits_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model("digits_mlp").state_dict()


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------- hostile checkpoints


@dataclass(frozen=True)
class HostileFile:
    name: str
    make: Callable[[], bytes]
    reason: str  # regex the run's recorded error must match


HOSTILE_FILES = {
    "hash-bomb-pickle": HostileFile("bomb.pt", hostile.hash_bomb_pickle, r"CPU-time limit of 2 s"),
    "hash-bomb-in-zip": HostileFile(
        "bomb-zip.pt",
        lambda: hostile.torch_archive_with_pickle(hostile.hash_bomb_pickle()),
        r"CPU-time limit of 2 s",
    ),
    "deflate-bomb-1GiB": HostileFile(
        "zipbomb.pt", lambda: hostile.zip_bomb_checkpoint(1024 * MiB), r"compressed; torch\.save never compresses"
    ),
    "deflated-real-checkpoint": HostileFile(
        "deflated.pt", lambda: hostile.compressed_record_checkpoint(digits_state()), r"is compressed"
    ),
    "record-declares-3GiB": HostileFile(
        "declared.pt", lambda: hostile.oversized_stored_record(3 * 1024**3), r"declares a size it does not store"
    ),
    "tensor-past-memory-limit": HostileFile(
        "big.pt", lambda: torch_bytes({"layers.1.weight": torch.zeros(100 * MiB // 4)}), r"memory limit of 256 MiB"
    ),
    "deep-nesting": HostileFile("deep.pt", hostile.deep_nesting_pickle, r"refused|crashed|nested"),
    "safetensors-dtype-torch-lacks": HostileFile(
        "f8.safetensors", lambda: hostile.safetensors_with_dtype("F8_E8M0"), r"not a valid safetensors file: KeyError"
    ),
    "safetensors-header-claims-1GiB": HostileFile(
        "header.safetensors", lambda: hostile.safetensors_header_length(1024**3), r"not a valid safetensors file"
    ),
    "safetensors-offsets-overlap": HostileFile(
        "overlap.safetensors", hostile.safetensors_overlapping_offsets, r"not a valid safetensors file"
    ),
}


@pytest.mark.scenario(
    "Hostile checkpoint, bounded parse",
    "its own run fails with the bound it hit; demos evaluated in the same run; worker RSS small; lease kept",
)
@pytest.mark.parametrize("case_id", list(HOSTILE_FILES))
def test_hostile_checkpoint_is_parsed_in_bounds(deployment: Deployment, figure, case_id: str) -> None:
    case = HOSTILE_FILES[case_id]
    data = case.make()
    (deployment.checkpoint_root / case.name).write_bytes(data)
    deployment.register_row("hostile", case.name, sha256=hashlib.sha256(data).hexdigest())
    # A short lease: a parse that outlived it without heartbeats would be claimed again (attempt 2).
    measured = run_measured(deployment, "run", "--lease-seconds", "3", env=TIGHT_LIMITS)
    result = measured.result
    figure(
        f"{len(data):,} B file: exit {result.returncode} in {measured.seconds:.1f} s, "
        f"peak RSS worker {measured.max_rss_mb:.0f} MiB, parser {measured.parser_rss_mb:.0f} MiB"
    )
    assert result.returncode == 3, result.output
    assert "Traceback" not in result.output
    runs = runs_by_name(deployment)
    for name, verdict in DEMO_VERDICTS.items():
        assert runs[name] == [("succeeded", verdict, "")], runs
    [(status, verdict, error)] = runs["hostile"]
    assert (status, verdict) == ("failed", "fail")
    assert re.search(case.reason, error), error
    with deployment.superuser() as conn:
        [(attempt,)] = conn.execute(
            "SELECT attempt FROM ckpt_eval.evaluations WHERE checkpoint_name = 'hostile'"
        ).fetchall()
    assert attempt == 1, "the lease must stay alive while the parser works"
    assert "lease lost" not in result.output
    assert measured.max_rss_mb < 1024, "the worker never holds what the parser expands"
    assert measured.parser_rss_mb < 1024, "the parser stays within its memory bound (256 MiB + its own)"
    figure(error[:90])


@pytest.mark.scenario(
    "Hostile checkpoint at register", "register refuses a hostile file with exit 65 in bounded time; nothing stored"
)
@pytest.mark.parametrize("case_id", ["hash-bomb-pickle", "deflate-bomb-1GiB", "safetensors-dtype-torch-lacks"])
def test_register_refuses_hostile_files(deployment: Deployment, figure, case_id: str) -> None:
    case = HOSTILE_FILES[case_id]
    (deployment.checkpoint_root / case.name).write_bytes(case.make())
    measured = run_measured(
        deployment, "register", case.name, "--arch", "digits_mlp", "--dataset", "digits", env=TIGHT_LIMITS
    )
    figure(f"exit {measured.result.returncode} in {measured.seconds:.1f} s")
    assert measured.result.returncode == 65, measured.result.output
    assert "Traceback" not in measured.result.output
    assert measured.result.stdout == ""
    with deployment.superuser() as conn:
        assert conn.execute("SELECT count(*) FROM ckpt_eval.checkpoints").fetchone() == (2,)


# --------------------------------------------------------------------------- untrusted text


OSC_TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J\x1b[H"
C1_CSI = "\x9b31m"
BIDI = "\u202eexe.txt"
FORGED_LINE = "\n2026-01-01 00:00:00,000 INFO ckpt_eval.job: checkpoint 1 'x': verdict pass"
HOSTILE_TEXTS = [OSC_TITLE, CLEAR, C1_CSI, BIDI, FORGED_LINE, "\x7f\x00"[:1] + "\x08\x08", "\u200b\ufeff"]


def hostile_text(index: int) -> str:
    return f"t{index}{HOSTILE_TEXTS[index % len(HOSTILE_TEXTS)]}z"


def register_hostile_text_rows(deployment: Deployment) -> None:
    root = deployment.checkpoint_root
    good_sha = hashlib.sha256((root / GOOD_FILE).read_bytes()).hexdigest()
    # registry values: name, arch, dataset, path
    deployment.register_row(f"name{OSC_TITLE}{CLEAR}", GOOD_FILE, sha256=good_sha)
    deployment.register_row("arch", GOOD_FILE, arch=f"mlp{C1_CSI}{BIDI}", sha256=good_sha)
    deployment.register_row("dataset", GOOD_FILE, dataset=f"digits{FORGED_LINE}", sha256=good_sha)
    deployment.register_row("path", f"missing{CLEAR}{BIDI}.pt")
    # a file whose name carries control characters (and exists)
    odd_name = f"odd{OSC_TITLE}.pt"
    (root / odd_name).write_bytes(b"not a checkpoint")
    deployment.register_row("file-name", odd_name)
    # state-dict keys
    state = digits_state()
    state[f"layers.1.weight{CLEAR}"] = state.pop("layers.1.weight")
    (root / "keys.pt").write_bytes(torch_bytes(state))
    deployment.register_row("state-dict-keys", "keys.pt")
    # a refused pickle global
    (root / "global.pt").write_bytes(hostile.pickle_with_global(f"os{OSC_TITLE}", f"system{CLEAR}"))
    deployment.register_row("pickle-global", "global.pt")
    # safetensors header: a tensor name with control characters
    tensors = {f"evil{OSC_TITLE}{C1_CSI}": torch.zeros(2)}
    (root / "header.safetensors").write_bytes(bytes(save_safetensors(tensors)))
    deployment.register_row("safetensors-header", "header.safetensors")


@pytest.mark.scenario(
    "Untrusted text escaped",
    "no control character from the registry or a file reaches stdout/stderr, in any format or command",
)
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("run",), id="run-plain-table"),
        pytest.param(("run", "--log-format", "json", "--format", "json"), id="run-json"),
        pytest.param(("run", "--log-level", "debug"), id="run-debug"),
        pytest.param(("run", "--dry-run"), id="dry-run"),
        pytest.param(("status",), id="status"),
        pytest.param(("status", "--format", "json"), id="status-json"),
    ],
)
def test_untrusted_text_never_reaches_the_terminal_raw(
    deployment: Deployment, figure, command: tuple[str, ...]
) -> None:
    register_hostile_text_rows(deployment)
    if command[0] == "status":
        deployment.ckpt_eval("run")  # something to show
    measured = run_measured(deployment, *command)
    result = measured.result
    assert result.returncode in (0, 3), result.output
    assert_no_raw_control(result.stdout)
    assert_no_raw_control(result.stderr)
    escaped = result.output.count("\\x1b") + result.output.count("\\u001b") + result.output.count("\\\\x1b")
    assert escaped > 0, "the hostile values must be shown, escaped"
    figure(f"exit {result.returncode}; {len(result.output):,} chars, {escaped} escaped ESC, none raw")


@pytest.mark.scenario("Untrusted text in recorded errors", "errors stored in the database are escaped and one line")
def test_recorded_errors_are_escaped(deployment: Deployment, figure) -> None:
    register_hostile_text_rows(deployment)
    deployment.ckpt_eval("run")
    runs = runs_by_name(deployment)
    errors = [error for name, entries in runs.items() for (_, _, error) in entries if error]
    assert len(errors) >= 6
    for error in errors:
        assert_no_raw_control(error)
        assert "\n" not in error
    figure(f"{len(errors)} recorded errors, none with a raw control character")


@pytest.mark.scenario("Untrusted text at register", "register's errors escape hostile file names and keys")
def test_register_errors_are_escaped(deployment: Deployment, figure) -> None:
    register_hostile_text_rows(deployment)
    outputs = []
    for path in (f"odd{OSC_TITLE}.pt", "keys.pt", "global.pt", "header.safetensors", f"gone{CLEAR}.pt"):
        result = deployment.ckpt_eval("register", path, "--name", "n", "--arch", "digits_mlp", "--dataset", "digits")
        assert result.returncode == 65, result.output
        assert_no_raw_control(result.output)
        outputs.append(result.output)
    result = deployment.ckpt_eval("register", GOOD_FILE, "--arch", f"x{CLEAR}", "--dataset", "digits")
    assert result.returncode == 2
    assert_no_raw_control(result.output)
    result = deployment.ckpt_eval("register", GOOD_FILE, "--arch", "digits_mlp", "--dataset", "digits", "--name", CLEAR)
    assert result.returncode == 2
    assert_no_raw_control(result.output)
    # a file name that would make an unprintable checkpoint name: usage error, asks for --name
    result = deployment.ckpt_eval("register", f"odd{OSC_TITLE}.pt", "--arch", "digits_mlp", "--dataset", "digits")
    assert result.returncode == 2
    assert_no_raw_control(result.output)
    figure(f"{len(outputs) + 3} refusals, all escaped")


# --------------------------------------------------------------------------- flags


REGISTER_GOOD = ("register", GOOD_FILE, "--arch", "digits_mlp", "--dataset", "digits")
BAD_FLAGS = {
    "min-accuracy-nan": ("register", GOOD_FILE, "--arch", "digits_mlp", "--dataset", "digits", "--min-accuracy", "nan"),
    "min-f1-inf": ("register", GOOD_FILE, "--arch", "digits_mlp", "--dataset", "digits", "--min-f1", "inf"),
    "min-accuracy-above-1": (
        "register",
        GOOD_FILE,
        "--arch",
        "digits_mlp",
        "--dataset",
        "digits",
        "--min-accuracy",
        "1.5",
    ),
    "lease-nan": ("run", "--lease-seconds", "nan"),
    "lease-inf": ("run", "--lease-seconds", "inf"),
    "lease-1e309": ("run", "--lease-seconds", "1e309"),
    "lease-a-year": ("run", "--lease-seconds", "31536000"),
    "statement-timeout-server-max": ("run", "--statement-timeout", "9999999"),
    "db-retry-seconds-nan": ("run", "--db-retry-seconds", "nan"),
    "db-retries-huge": ("run", "--db-retries", "100000"),
    "checkpoint-id-past-bigint": ("run", "--checkpoint-id", "9223372036854775808"),
    "batch-size-huge": ("run", "--batch-size", "100000000"),
    "load-timeout-negative": ("run", "--load-timeout", "-1"),
    "load-cpu-nan": ("run", "--load-cpu-seconds", "nan"),
    "load-memory-tiny": ("run", "--load-memory-mb", "1"),
    "train-lr-nan": ("train", "--arch", "digits_mlp", "--dataset", "digits", "--out", "x.pt", "--lr", "nan"),
    "train-seed-negative": ("train", "--arch", "digits_mlp", "--dataset", "digits", "--out", "x.pt", "--seed", "-1"),
}
BAD_ENV = {
    "env-lease-nan": {"CKPT_EVAL_LEASE_SECONDS": "nan"},
    "env-retry-seconds-inf": {"CKPT_EVAL_DB_RETRY_SECONDS": "-inf"},
    "env-statement-timeout-huge": {"CKPT_EVAL_STATEMENT_TIMEOUT": "2147484"},
    "env-load-timeout-escape": {"CKPT_EVAL_LOAD_TIMEOUT": f"1{CLEAR}"},
}


@pytest.mark.scenario("Bad flag", "exit 2 at once, one error naming the flag, nothing claimed or written")
@pytest.mark.parametrize("case_id", [*BAD_FLAGS, *BAD_ENV])
def test_bad_flags_are_usage_errors(deployment: Deployment, figure, case_id: str) -> None:
    args = BAD_FLAGS.get(case_id, ("run",))
    env = BAD_ENV.get(case_id)
    measured = run_measured(deployment, *args, env=env)
    result = measured.result
    figure(f"exit {result.returncode} in {measured.seconds:.1f} s: {result.stderr.strip().splitlines()[-1][:80]}")
    assert result.returncode == 2, result.output
    assert "Traceback" not in result.output
    assert_no_raw_control(result.output)
    with deployment.superuser() as conn:
        assert conn.execute("SELECT count(*) FROM ckpt_eval.evaluation_runs").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM ckpt_eval.evaluations WHERE status <> 'pending'").fetchone() == (0,)


# --------------------------------------------------------------------------- secret sources


def fifo(deployment: Deployment, name: str) -> Path:
    path = deployment.workdir / name
    os.mkfifo(path)
    return path


SECRET_SOURCES: dict[str, Callable[[Deployment], tuple[list[str], dict[str, str], int]]] = {
    "password-file-dev-zero": lambda d: ([], {"CKPT_EVAL_VAULT_PASSWORD_FILE": "/dev/zero"}, 78),
    "password-file-dev-urandom": lambda d: ([], {"CKPT_EVAL_VAULT_PASSWORD_FILE": "/dev/urandom"}, 78),
    "password-file-fifo-no-writer": lambda d: (
        [],
        {"CKPT_EVAL_VAULT_PASSWORD_FILE": str(fifo(d, "password-fifo"))},
        78,
    ),
    "password-file-directory": lambda d: ([], {"CKPT_EVAL_VAULT_PASSWORD_FILE": str(d.workdir)}, 78),
    "password-file-100MB": lambda d: ([], {"CKPT_EVAL_VAULT_PASSWORD_FILE": str(big_file(d, 100 * MiB))}, 78),
    "password-file-missing": lambda d: ([], {"CKPT_EVAL_VAULT_PASSWORD_FILE": str(d.workdir / "nope")}, 66),
    "credentials-fifo-no-writer": lambda d: (["--credentials", str(fifo(d, "cred-fifo"))], {}, 78),
    "credentials-dev-zero": lambda d: (["--credentials", "/dev/zero"], {}, 78),
    "credentials-2MB": lambda d: (["--credentials", str(big_file(d, 2 * MiB))], {}, 78),
}


def big_file(deployment: Deployment, size: int) -> Path:
    path = deployment.workdir / f"big-{size}"
    with path.open("wb") as stream:
        stream.truncate(size)
    return path


@pytest.mark.scenario("Bounded secret source", "device, FIFO, directory or huge file: exit 78/66 at once, no hang")
@pytest.mark.parametrize("case_id", list(SECRET_SOURCES))
def test_secret_sources_are_bounded(deployment: Deployment, figure, case_id: str) -> None:
    args, env, code = SECRET_SOURCES[case_id](deployment)
    measured = run_measured(deployment, "run", *args, env=env)
    result = measured.result
    figure(f"exit {result.returncode} in {measured.seconds:.1f} s, RSS {measured.max_rss_mb:.0f} MiB")
    assert result.returncode == code, result.output
    assert measured.seconds < 20
    assert measured.max_rss_mb < 300
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.scenario("Bounded stdin", "endless or never-closed stdin: exit 78/66 within the stdin bound, no hang")
@pytest.mark.parametrize("case_id", ["endless", "never-closed", "closed-empty"])
def test_stdin_password_is_bounded(deployment: Deployment, figure, case_id: str) -> None:
    env = {"CKPT_EVAL_VAULT_PASSWORD_FILE": "-", "CKPT_EVAL_STDIN_TIMEOUT": "3"}
    read_end, write_end = os.pipe()
    feeder: threading.Thread | None = None
    stop = threading.Event()
    if case_id == "endless":

        def feed() -> None:
            block = b"y\n" * 32768
            try:
                while not stop.is_set():
                    os.write(write_end, block)
            except OSError:
                return

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
    elif case_id == "closed-empty":
        os.close(write_end)
    try:
        measured = run_measured(deployment, "run", env=env, stdin=read_end)
    finally:
        stop.set()
        os.close(read_end)
        if case_id != "closed-empty":
            os.close(write_end)
    result = measured.result
    figure(f"exit {result.returncode} in {measured.seconds:.1f} s, RSS {measured.max_rss_mb:.0f} MiB")
    expected = {"endless": 78, "never-closed": 66, "closed-empty": 77}[case_id]
    assert result.returncode == expected, result.output
    assert measured.seconds < 15
    assert measured.max_rss_mb < 300
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- the recorded hash is required


@pytest.mark.scenario(
    "Registry row without sha256", "cannot be inserted; a legacy row without one fails its run, its file never loaded"
)
def test_a_row_without_a_recorded_hash_never_loads(deployment: Deployment, tmp_path: Path, figure) -> None:
    import psycopg

    with deployment.superuser() as conn, pytest.raises(psycopg.errors.NotNullViolation):
        conn.execute(
            "INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset) "
            "VALUES ('nohash', %s, 'digits_mlp', 'digits')",
            (GOOD_FILE,),
        )
    # A row left by an older schema version (the column was nullable then): it must fail, not load.
    marker = tmp_path / "payload-ran"
    (deployment.checkpoint_root / "legacy.pt").write_bytes(hostile.code_execution_pickle(marker))
    with deployment.superuser() as conn:
        conn.execute("ALTER TABLE ckpt_eval.checkpoints ALTER COLUMN sha256 DROP NOT NULL")
        conn.execute(
            "INSERT INTO ckpt_eval.checkpoints (name, path, arch, dataset) "
            "VALUES ('legacy', 'legacy.pt', 'digits_mlp', 'digits')"
        )
    result = deployment.ckpt_eval("run")
    assert result.returncode == 3, result.output
    runs = runs_by_name(deployment)
    [(status, _, error)] = runs["legacy"]
    assert status == "failed"
    assert "no sha256 is recorded" in error
    assert not marker.exists()
    for name, verdict in DEMO_VERDICTS.items():
        assert runs[name] == [("succeeded", verdict, "")]
    figure(error[:90])


def test_hostile_helpers_build_what_they_say() -> None:
    """The catalogue's own check: each hostile file is what its case claims (so a refusal means something)."""
    import zipfile

    bomb = hostile.zip_bomb_checkpoint(64 * MiB)
    with zipfile.ZipFile(io.BytesIO(bomb)) as archive:
        assert sum(info.file_size for info in archive.infolist()) >= 64 * MiB
        assert len(bomb) < MiB
    assert len(hostile.hash_bomb_pickle()) < 1024
    assert pickle.loads(hostile.pickle_with_global("builtins", "dict")) == {}  # a live call: refusing it matters
    raw = hostile.safetensors_with_dtype("F8_E8M0")
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length].decode())
    assert header["layers.1.weight"]["dtype"] == "F8_E8M0"
