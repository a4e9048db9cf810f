"""The ``ckpt-eval`` command line: the only place where errors become exit codes."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__, logs
from .credentials import DbCredentials, decrypt_credentials, resolve_vault_password, take_password_from_environment
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    CheckpointError,
    CkptEvalError,
    DataError,
    MissingInputError,
    UsageError,
)
from .text import printable, quoted

if TYPE_CHECKING:
    from .config import Settings
    from .db.connection import RetryPolicy
    from .db.scoring import ScoringRepository
    from .isolation import ParseLimits

log = logging.getLogger("ckpt_eval")

# Taken from the environment before anything else runs (see main), so no child inherits it.
_environment_password: bytes | None = None

EPILOG = """\b
Examples:
  ckpt-eval run --vault-password-file ~/.vault-pass
  ANSIBLE_VAULT_PASSWORD=... ckpt-eval run --log-format json
  ckpt-eval run --checkpoint-id 3 --force        # evaluate checkpoint 3 again (new run, history kept)
  ckpt-eval run --failed --dry-run                # list what a rerun of the failed ones would do
  ckpt-eval status --format json
  ckpt-eval register fashion/cnn-v2.pth --arch fashion_cnn --dataset fashion_mnist --min-accuracy 0.85
  ckpt-eval dataset add sonar --kind table --source lab.sonar --features-file cols.txt --label-column label \\
      --class-names R,M
  ckpt-eval attach cnn-v2 mnist                   # evaluate checkpoint cnn-v2 on mnist too
  ckpt-eval train --arch digits_mlp --dataset digits --out checkpoints/new.pt --epochs 5 --seed 1
  ckpt-eval promote cnn-v2 --dataset fashion_mnist --reason "release 14"
  ckpt-eval gate set --dataset fashion_mnist 'f1_macro>=0.85' 'f1_macro>=champion+0.005'
  ckpt-eval report --dataset fashion_mnist --out reports/fashion

\b
Exit codes: 0 all evaluated and passed; 3 a checkpoint failed or failed its gate; 2 usage;
65 bad data; 66 missing input; 75 database unavailable; 77 vault or database authentication;
78 configuration; 70 internal error; 130 interrupted.
"""


# PostgreSQL keeps statement_timeout in milliseconds in a signed 32-bit integer.
MAX_STATEMENT_TIMEOUT_SECONDS = 2_147_483
MAX_BIGINT = 2**63 - 1
MAX_NAME_LENGTH = 200
# datasets.KINDS, spelled out so the command line starts without importing numpy (a test keeps them equal).
DATASET_KINDS = ("idx", "digits", "breast_cancer", "csv", "table")


class Finite(click.ParamType):
    """A float within [low, high] (``low_open``: above low): NaN and infinities are refused."""

    name = "number"

    def __init__(self, low: float, high: float, *, low_open: bool = False) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{quoted(value, 40)} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{quoted(value, 40)} is not a finite number", param, ctx)
        below = number <= self.low if self.low_open else number < self.low
        if below or number > self.high:
            bracket = "(" if self.low_open else "["
            self.fail(f"{number:g} is not in the range {bracket}{self.low:g}, {self.high:g}]", param, ctx)
        return number


def _parse_limit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    from .isolation import DEFAULT_CPU_SECONDS, DEFAULT_MEMORY_MB, DEFAULT_WALL_SECONDS

    options = [
        click.option(
            "--load-timeout",
            type=Finite(0, 3600, low_open=True),
            default=DEFAULT_WALL_SECONDS,
            show_default=True,
            envvar="CKPT_EVAL_LOAD_TIMEOUT",
            help="Wall-clock seconds the isolated parser may spend on one checkpoint [env CKPT_EVAL_LOAD_TIMEOUT].",
        ),
        click.option(
            "--load-cpu-seconds",
            type=Finite(0, 3600, low_open=True),
            default=DEFAULT_CPU_SECONDS,
            show_default=True,
            envvar="CKPT_EVAL_LOAD_CPU_SECONDS",
            help="CPU seconds the isolated parser may spend on one checkpoint [env CKPT_EVAL_LOAD_CPU_SECONDS].",
        ),
        click.option(
            "--load-memory-mb",
            type=click.IntRange(64, 1024 * 1024),
            default=DEFAULT_MEMORY_MB,
            show_default=True,
            envvar="CKPT_EVAL_LOAD_MEMORY_MB",
            help="Memory (MiB) the isolated parser may use for one checkpoint; larger files are refused "
            "[env CKPT_EVAL_LOAD_MEMORY_MB].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _parse_limits(options: dict[str, Any]) -> ParseLimits:
    from .isolation import ParseLimits

    return ParseLimits(
        wall_seconds=options.pop("load_timeout"),
        cpu_seconds=options.pop("load_cpu_seconds"),
        memory_bytes=options.pop("load_memory_mb") * 1024 * 1024,
    )


def _logging_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--log-format",
        type=click.Choice(logs.LOG_FORMATS),
        default="plain",
        show_default=True,
        envvar="CKPT_EVAL_LOG_FORMAT",
        help="Log format on stderr [env CKPT_EVAL_LOG_FORMAT].",
    )(func)
    func = click.option(
        "--log-level",
        type=click.Choice(logs.LOG_LEVELS),
        default="info",
        show_default=True,
        envvar="CKPT_EVAL_LOG_LEVEL",
        help="Log level [env CKPT_EVAL_LOG_LEVEL].",
    )(func)
    return func


def _database_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--credentials",
            type=click.Path(dir_okay=False, path_type=Path),
            default="db.credentials",
            show_default=True,
            envvar="CKPT_EVAL_CREDENTIALS",
            help="ansible-vault encrypted YAML with host, port, dbname, user, password [env CKPT_EVAL_CREDENTIALS].",
        ),
        click.option(
            "--vault-password-file",
            metavar="PATH",
            envvar="CKPT_EVAL_VAULT_PASSWORD_FILE",
            help="File holding the vault password, '-' for stdin [env CKPT_EVAL_VAULT_PASSWORD_FILE]; "
            "otherwise ANSIBLE_VAULT_PASSWORD is used.",
        ),
        click.option(
            "--db-retries",
            type=click.IntRange(1, 100),
            default=5,
            show_default=True,
            envvar="CKPT_EVAL_DB_RETRIES",
            help="Connection attempts before giving up with exit 75 [env CKPT_EVAL_DB_RETRIES].",
        ),
        click.option(
            "--db-retry-seconds",
            type=Finite(0, 86400),
            default=60.0,
            show_default=True,
            envvar="CKPT_EVAL_DB_RETRY_SECONDS",
            help="Upper bound on the time spent retrying the database [env CKPT_EVAL_DB_RETRY_SECONDS].",
        ),
        click.option(
            "--statement-timeout",
            type=click.IntRange(1, MAX_STATEMENT_TIMEOUT_SECONDS),
            default=60,
            show_default=True,
            envvar="CKPT_EVAL_STATEMENT_TIMEOUT",
            help="Seconds any one SQL statement may run [env CKPT_EVAL_STATEMENT_TIMEOUT].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _checkpoint_root_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--checkpoint-root",
        type=click.Path(file_okay=False, path_type=Path),
        default="checkpoints",
        show_default=True,
        envvar="CKPT_EVAL_CHECKPOINT_ROOT",
        help="Directory that every registered checkpoint path is relative to [env CKPT_EVAL_CHECKPOINT_ROOT].",
    )(func)


def _data_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default="data",
        show_default=True,
        envvar="CKPT_EVAL_DATA_DIR",
        help="Directory with IDX datasets (<dir>/fashion_mnist/, <dir>/FashionMNIST/raw/, ...) "
        "[env CKPT_EVAL_DATA_DIR]. digits needs none.",
    )(func)


def _format_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Output on stdout: an aligned table for people, JSON for machines.",
    )(func)


def _lease_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--lease-seconds",
        type=Finite(2, 86400),
        default=300.0,
        show_default=True,
        envvar="CKPT_EVAL_LEASE_SECONDS",
        help=f"Lease on a claimed {what}, renewed every third of it [env CKPT_EVAL_LEASE_SECONDS].",
    )


def _torch_threads_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--torch-threads",
        type=click.IntRange(0, 1024),
        default=0,
        show_default=True,
        envvar="CKPT_EVAL_TORCH_THREADS",
        help="CPU threads for inference; 0 keeps PyTorch's default (one per core). Several jobs on one host "
        "run faster with cores/jobs each [env CKPT_EVAL_TORCH_THREADS].",
    )(func)


def _batch_size_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--batch-size",
        type=click.IntRange(1, 65536),
        default=512,
        show_default=True,
        envvar="CKPT_EVAL_BATCH_SIZE",
        help="Inference batch size [env CKPT_EVAL_BATCH_SIZE].",
    )(func)


def _load_credentials(credentials: Path, vault_password_file: str | None) -> DbCredentials:
    password = resolve_vault_password(vault_password_file, _environment_password)
    try:
        return decrypt_credentials(credentials, password)
    finally:
        del password


def _retry_policy(db_retries: int, db_retry_seconds: float) -> RetryPolicy:
    from .db.connection import RetryPolicy  # heavy (psycopg): imported once a command needs it

    return RetryPolicy(attempts=db_retries, max_seconds=db_retry_seconds)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="ckpt-eval")
def cli() -> None:
    """Evaluate model checkpoints registered in Greenplum/PostgreSQL and write their metrics back.

    The only secret is the vault password that opens db.credentials; it is read from a file,
    stdin, or ANSIBLE_VAULT_PASSWORD, never from an argument.
    """


@cli.command(epilog=EPILOG)
@click.option(
    "--checkpoint-id",
    "checkpoint_ids",
    type=click.IntRange(1, MAX_BIGINT),
    multiple=True,
    metavar="N",
    help="Only these checkpoints (repeatable).",
)
@click.option(
    "--dataset",
    "dataset_names",
    multiple=True,
    metavar="NAME",
    help="Only pairs on these datasets (repeatable).",
)
@click.option("--force", is_flag=True, help="Queue already evaluated pairs again: a new run, history kept.")
@click.option("--failed", is_flag=True, help="Queue pairs whose latest run failed again.")
@click.option("--dry-run", is_flag=True, help="List what would be evaluated; change nothing.")
@_lease_option("checkpoint")
@_torch_threads_option
@click.option(
    "--dataset-read-timeout",
    type=click.IntRange(1, MAX_STATEMENT_TIMEOUT_SECONDS),
    default=3600,
    show_default=True,
    envvar="CKPT_EVAL_DATASET_READ_TIMEOUT",
    help="Seconds one read of a table dataset (streamed while it is evaluated) may take "
    "[env CKPT_EVAL_DATASET_READ_TIMEOUT].",
)
@_batch_size_option
@click.option(
    "--group-size",
    type=click.IntRange(1, 1024),
    default=8,
    show_default=True,
    envvar="CKPT_EVAL_GROUP_SIZE",
    help="Pairs of one architecture and dataset claimed and evaluated together, one pass over the data "
    "for all of them; 1 evaluates one at a time, which spreads a short queue over more workers "
    "[env CKPT_EVAL_GROUP_SIZE].",
)
@_format_option
@_checkpoint_root_option
@_data_dir_option
@_parse_limit_options
@_database_options
@_logging_options
def run(**options: Any) -> None:
    """Claim pending (checkpoint, dataset) pairs, evaluate each one, record metrics and a verdict.

    A dataset whose pairs are all evaluated is checked for a new version first (its fingerprint):
    if its content changed, those pairs are evaluated again.
    """
    _start_logging(options)
    # The secret first: a bad password source fails before anything heavy is imported or started.
    creds = _load_credentials(options["credentials"], options["vault_password_file"])
    if not options["dry_run"]:
        _import_in_background("torch")  # overlaps PyTorch's import with connecting and claiming
    from .config import Settings
    from .db.connection import connect
    from .db.repository import Repository
    from .isolation import CheckpointParser
    from .report import PLAN_COLUMNS, summary_json, summary_text, table, to_json

    settings = Settings(
        parse_limits=_parse_limits(options),
        credentials_path=options["credentials"],
        vault_password_file=options["vault_password_file"],
        checkpoint_root=options["checkpoint_root"],
        data_dir=options["data_dir"],
        lease_seconds=options["lease_seconds"],
        batch_size=options["batch_size"],
        group_size=options["group_size"],
        torch_threads=options["torch_threads"],
        statement_timeout_ms=options["statement_timeout"] * 1000,
        retry=_retry_policy(options["db_retries"], options["db_retry_seconds"]),
    )
    selection_ids = tuple(options["checkpoint_ids"])
    selection_datasets = tuple(dict.fromkeys(options["dataset_names"]))

    def new_repository() -> Repository:
        return Repository(creds, settings.retry, **settings.connect_options())

    with new_repository() as repository:
        repository.check_schema()
        log.debug("connected; Greenplum-family server: %s", repository.is_greenplum())
        if options["dry_run"]:
            if selection_ids:
                repository.check_ids_exist(selection_ids)
            repository.check_datasets_exist(selection_datasets)
            planned = repository.planned(
                selection_ids or None, options["force"], options["failed"], selection_datasets or None
            )
            if options["output_format"] == "json":
                click.echo(to_json({"would_evaluate": planned}))
            else:
                click.echo(table(planned, PLAN_COLUMNS) if planned else "nothing would be evaluated")
            return
        # Started now, so torch is imported in the parser while the job talks to the database.
        with CheckpointParser(settings.parse_limits) as parser:
            from .db.table_reader import open_table_reader
            from .job import Job, Selection

            selection = Selection(selection_ids, options["force"], options["failed"], selection_datasets)
            read_table = open_table_reader(
                lambda: connect(creds, settings.retry, **settings.connect_options()),
                timeout_ms=options["dataset_read_timeout"] * 1000,
            )
            with _progress(repository, selection) as on_outcome:
                job = Job(settings, repository, new_repository, parser, on_outcome=on_outcome, read_table=read_table)
                summary = job.run(selection)
    click.echo(summary_json(summary) if options["output_format"] == "json" else summary_text(summary))
    if not summary.all_passed:
        raise click.exceptions.Exit(EXIT_SOME_FAILED)


def _import_in_background(module: str) -> None:
    """Start importing a heavy module in a daemon thread; a later import waits for it (Python's import lock)."""
    threading.Thread(target=_import_quietly, args=(module,), name=f"import-{module}", daemon=True).start()


def _import_quietly(module: str) -> None:
    """Only a head start: a job that ends early (a refused connection) may exit while this thread still
    imports, and a real failure is raised by the import on the main thread, where it is reported."""
    import contextlib
    import importlib

    with contextlib.suppress(BaseException):
        importlib.import_module(module)


class _progress:
    """A progress bar over the checkpoints of this run, only when stderr is a terminal."""

    def __init__(self, repository: Any, selection: Any) -> None:
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            planned = repository.planned(
                selection.ids or None, selection.force, selection.failed, selection.datasets or None
            )
            self._bar = tqdm(total=len(planned), unit="pair", desc="evaluating", file=sys.stderr, leave=False)

    def __enter__(self) -> Callable[[Any], None]:
        return lambda outcome: self._bar.update(1) if self._bar is not None else None

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


@cli.command(epilog=EPILOG)
@_format_option
@_database_options
@_logging_options
def status(**options: Any) -> None:
    """Show every (checkpoint, dataset) pair with its job state and latest result."""
    from .db.repository import Repository
    from .report import STATUS_COLUMNS, table, to_json

    _start_logging(options)
    creds = _load_credentials(options["credentials"], options["vault_password_file"])
    policy = _retry_policy(options["db_retries"], options["db_retry_seconds"])
    with Repository(creds, policy, statement_timeout_ms=options["statement_timeout"] * 1000) as repository:
        repository.check_schema()
        rows = repository.status()
    if options["output_format"] == "json":
        click.echo(to_json({"checkpoints": rows}))
    else:
        click.echo(table(rows, STATUS_COLUMNS) if rows else "no checkpoints registered")


@cli.command(epilog=EPILOG)
@click.argument("job_name", metavar="JOB")
@click.option("--dry-run", is_flag=True, help="Say how many rows would be scored; change nothing.")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_BIGINT),
    metavar="N",
    help="Score at most N rows in this run (the ones with the lowest keys); the next run takes the rest.",
)
@click.option("--rescore", is_flag=True, help="Score every row again as a new scoring run (history kept).")
@click.option("--force", is_flag=True, help="Score with the checkpoint even if it has not passed its gate.")
@click.option(
    "--skip-bad-rows",
    is_flag=True,
    help="Leave rows with NULL or non-numeric features without a prediction (counted, keys recorded) "
    "instead of failing their chunk.",
)
@_lease_option("chunk")
@_torch_threads_option
@_batch_size_option
@_format_option
@_checkpoint_root_option
@_parse_limit_options
@_database_options
@_logging_options
def score(job_name: str, **options: Any) -> None:
    """Score the rows of scoring job JOB's input that have no prediction from its checkpoint yet.

    Starts a scoring run, or joins the one in progress: any number of workers on any hosts share it,
    chunk by chunk, each chunk's predictions written exactly once.
    """
    _start_logging(options)
    from .config import Settings
    from .isolation import CheckpointParser
    from .report import scoring_summary_json, scoring_summary_text
    from .scoring import Scorer, ScoringOptions

    settings = Settings(
        parse_limits=_parse_limits(options),
        credentials_path=options["credentials"],
        vault_password_file=options["vault_password_file"],
        checkpoint_root=options["checkpoint_root"],
        data_dir=None,
        lease_seconds=options["lease_seconds"],
        batch_size=options["batch_size"],
        torch_threads=options["torch_threads"],
        statement_timeout_ms=options["statement_timeout"] * 1000,
        retry=_retry_policy(options["db_retries"], options["db_retry_seconds"]),
    )
    scoring = ScoringOptions(
        rescore=options["rescore"],
        limit=options["limit"],
        force=options["force"],
        skip_bad_rows=options["skip_bad_rows"],
        dry_run=options["dry_run"],
    )

    new_repository = _scoring_repositories(options, settings)
    with new_repository() as repository:
        repository.check_schema()
        if scoring.dry_run:
            summary = Scorer(settings, repository, new_repository, None).run(job_name, scoring)
        else:
            with CheckpointParser(settings.parse_limits) as parser:
                summary = Scorer(settings, repository, new_repository, parser).run(job_name, scoring)
    text = scoring_summary_json(summary) if options["output_format"] == "json" else scoring_summary_text(summary)
    click.echo(text)
    if not summary.ok:
        raise click.exceptions.Exit(EXIT_SOME_FAILED)


def _scoring_repositories(options: dict[str, Any], settings: Settings) -> Callable[[], ScoringRepository]:
    """New scoring repositories on the job's credentials (read once, here: the secret first)."""
    from .db.scoring import ScoringRepository

    creds = _load_credentials(options["credentials"], options["vault_password_file"])
    return lambda: ScoringRepository(creds, settings.retry, **settings.connect_options())


@cli.command("score-runs", epilog=EPILOG)
@click.argument("job_name", metavar="JOB")
@_format_option
@_database_options
@_logging_options
def score_runs(job_name: str, **options: Any) -> None:
    """Show the scoring runs of scoring job JOB, oldest first."""
    from .db.scoring import ScoringRepository
    from .report import SCORING_RUN_COLUMNS, table, to_json

    _start_logging(options)
    creds = _load_credentials(options["credentials"], options["vault_password_file"])
    policy = _retry_policy(options["db_retries"], options["db_retry_seconds"])
    with ScoringRepository(creds, policy, statement_timeout_ms=options["statement_timeout"] * 1000) as repository:
        repository.check_schema()
        job = repository.scoring_job(job_name)
        if job is None:
            raise UsageError(f"no scoring job {quoted(job_name, 60)}")
        rows = repository.scoring_runs(job_name)
        latest = rows[-1]["scoring_run_id"] if rows else None
        classes = repository.prediction_counts(job, latest) if latest is not None else []
    if options["output_format"] == "json":
        click.echo(to_json({"job": job_name, "scoring_runs": rows, "latest_run_classes": classes}))
        return
    if not rows:
        click.echo(f"scoring job {quoted(job_name, 60)}: no runs yet")
        return
    click.echo(table(rows, SCORING_RUN_COLUMNS))
    shown = ", ".join(f"{printable(c['predicted_class'] or c['predicted_index'], 60)}: {c['rows']}" for c in classes)
    click.echo(f"run {latest} predicted {shown or 'nothing'}")


@cli.command(epilog=EPILOG)
@click.argument("path")
@click.option("--arch", required=True, help="Architecture name (ckpt-eval architectures lists them).")
@click.option(
    "--dataset",
    "datasets",
    required=True,
    multiple=True,
    metavar="NAME",
    help="A registered dataset to evaluate it on (repeatable; ckpt-eval dataset list).",
)
@click.option("--name", help="Unique checkpoint name [default: the file name without extension].")
@click.option("--min-accuracy", type=Finite(0, 1), help="Gate: minimum accuracy [default 0.7].")
@click.option("--min-f1", type=Finite(0, 1), help="Gate: minimum macro-F1 [default 0.7].")
@_checkpoint_root_option
@_parse_limit_options
@_database_options
@_logging_options
def register(
    path: str,
    arch: str,
    datasets: tuple[str, ...],
    name: str | None,
    min_accuracy: float | None,
    min_f1: float | None,
    **options: Any,
) -> None:
    """Register the checkpoint at PATH (relative to the checkpoint root) for evaluation.

    The file is checked the way a run will check it (inside the root, loadable into ARCH)
    and its sha256 is stored, so a later change to the file fails its run. One pending
    evaluation is queued per dataset.
    """
    from .architectures import ArchitectureError, get_architecture
    from .checkpoints import inspect_checkpoint
    from .db.repository import Repository
    from .isolation import CheckpointParser

    _start_logging(options)
    limits = _parse_limits(options)
    try:
        get_architecture(arch)
    except ArchitectureError as exc:
        raise UsageError(str(exc)) from None
    checkpoint_name = name or Path(path).stem
    if not 1 <= len(checkpoint_name) <= MAX_NAME_LENGTH or not checkpoint_name.isprintable():
        raise UsageError(
            f"checkpoint name {quoted(checkpoint_name, 60)} must be 1 to {MAX_NAME_LENGTH} printable characters"
        )
    root: Path = options["checkpoint_root"]
    if not root.is_dir():
        raise MissingInputError(f"checkpoint root {printable(root)} is not a directory")
    try:
        with CheckpointParser(limits) as parser:
            loaded = inspect_checkpoint(root, path, arch, parser)
    except CheckpointError as exc:
        raise DataError(str(exc)) from None
    creds = _load_credentials(options["credentials"], options["vault_password_file"])
    policy = _retry_policy(options["db_retries"], options["db_retry_seconds"])
    with Repository(creds, policy, statement_timeout_ms=options["statement_timeout"] * 1000) as repository:
        repository.check_schema()
        checkpoint_id = repository.register(
            name=checkpoint_name,
            path=path,
            arch=arch,
            datasets=tuple(dict.fromkeys(datasets)),
            sha256=loaded.sha256,
            min_accuracy=min_accuracy,
            min_f1_macro=min_f1,
        )
    shown = ", ".join(quoted(dataset, 60) for dataset in dict.fromkeys(datasets))
    click.echo(
        f"registered checkpoint {checkpoint_id} {quoted(checkpoint_name)} ({printable(path)}, sha256 {loaded.sha256}) "
        f"for {shown}"
    )


def _open_repository(options: dict[str, Any], kind: type | None = None) -> Any:
    """A repository (``kind``: a Repository subclass) for a short command: credentials read, schema checked
    by the caller."""
    from .db.repository import Repository

    creds = _load_credentials(options["credentials"], options["vault_password_file"])
    policy = _retry_policy(options["db_retries"], options["db_retry_seconds"])
    return (kind or Repository)(creds, policy, statement_timeout_ms=options["statement_timeout"] * 1000)


@cli.command(epilog=EPILOG)
@click.argument("checkpoint")
@click.argument("dataset")
@_database_options
@_logging_options
def attach(checkpoint: str, dataset: str, **options: Any) -> None:
    """Queue CHECKPOINT (its name or id) for evaluation on DATASET too: a new pending pair."""
    _start_logging(options)
    with _open_repository(options) as repository:
        repository.check_schema()
        checkpoint_id, name = repository.attach(checkpoint, dataset)
    click.echo(f"attached checkpoint {checkpoint_id} {quoted(name)} to dataset {quoted(dataset, 60)}: pending")


def _who() -> str:
    """Who does it, as recorded with a promotion or a gate: the OS user and host (the role is the app's)."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = f"uid {os.getuid()}"
    return printable(f"{user}@{socket.gethostname()}", 300)


def _champion_repository(options: dict[str, Any]) -> Any:
    from .db.champions import ChampionRepository

    return _open_repository(options, ChampionRepository)


@cli.command(epilog=EPILOG)
@click.argument("checkpoint")
@click.option("--dataset", help="The dataset it becomes champion of [default: its only dataset].")
@click.option("--reason", help="Why (recorded with the promotion; at most 2,000 characters).")
@_format_option
@_database_options
@_logging_options
def promote(checkpoint: str, dataset: str | None, reason: str | None, **options: Any) -> None:
    """Make CHECKPOINT the champion of a dataset: what change rules compare candidates with.

    Recorded with who, when and why; earlier champions stay in the history. The app role may promote
    only where the deployment allows it (greenplum_app_may_promote); elsewhere the schema owner does
    (playbooks/promote.yml).
    """
    from .report import to_json

    _start_logging(options)
    if reason is not None and (len(reason) > 2000 or not reason.strip()):
        raise UsageError("--reason: 1 to 2,000 characters")
    with _champion_repository(options) as repository:
        repository.check_schema()
        promoted = repository.promote(checkpoint, dataset, _who(), reason)
    if options["output_format"] == "json":
        click.echo(to_json(promoted))
    else:
        click.echo(
            f"promotion {promoted['promotion_id']}: checkpoint {promoted['checkpoint_id']} {quoted(checkpoint)} "
            f"is the champion of {quoted(promoted['dataset'], 60)}"
        )


@cli.command(epilog=EPILOG)
@click.option("--dataset", help="Only this dataset's promotions.")
@click.option("--history", is_flag=True, help="Every promotion, not only each dataset's current champion.")
@_format_option
@_database_options
@_logging_options
def champions(dataset: str | None, history: bool, **options: Any) -> None:
    """List each dataset's champion (with --history, every promotion)."""
    from .report import table, to_json

    _start_logging(options)
    with _champion_repository(options) as repository:
        repository.check_schema()
        rows = repository.promotions(dataset)
    if not history:
        current = {row["dataset"]: row for row in rows}
        rows = sorted(current.values(), key=lambda row: row["dataset"])
    if options["output_format"] == "json":
        click.echo(to_json({"promotions" if history else "champions": rows}))
        return
    columns = (("dataset", "dataset"), ("checkpoint_name", "champion"), ("checkpoint_id", "id"),
               ("promoted_at", "promoted"), ("promoted_by", "by"), ("reason", "reason"))  # fmt: skip
    click.echo(table(rows, columns) if rows else "no champion promoted yet")


@cli.group(epilog=EPILOG)
def gate() -> None:
    """Gate rules of a checkpoint or of a dataset.

    \b
    A rule: METRIC>=X or METRIC<=X (a threshold), METRIC>=champion+D or METRIC<=champion-D
    (a minimum change over the champion's latest run on the same dataset version; D may end in %,
    a negative change tolerates a regression). >= means higher is better, <= lower is better.
    Per metric the most specific rules apply: the checkpoint's, else the dataset's, else the
    checkpoint's --min-accuracy/--min-f1 (0.7 each by default).
    \b
      ckpt-eval gate set --dataset digits 'f1_macro>=0.9' 'f1_macro>=champion+0.005' 'log_loss<=champion'
      ckpt-eval gate show --checkpoint cnn-v2
    """


def _gate_scope(checkpoint: str | None, dataset: str | None) -> None:
    if (checkpoint is None) == (dataset is None):
        raise UsageError("name the gate's scope: --checkpoint NAME or --dataset NAME")


@gate.command("set", epilog=EPILOG)
@click.argument("rules", nargs=-1)
@click.option("--checkpoint", help="The checkpoint the rules are for.")
@click.option("--dataset", help="The dataset the rules are for (every checkpoint evaluated on it).")
@_database_options
@_logging_options
def gate_set(rules: tuple[str, ...], checkpoint: str | None, dataset: str | None, **options: Any) -> None:
    """Set the gate of a checkpoint or a dataset to RULES (none: the less specific gates apply again).

    The new gate applies to the runs that follow; recorded runs keep the verdict they were given.
    """
    from .gates import GateSyntaxError, parse_rule, rule_text

    _start_logging(options)
    _gate_scope(checkpoint, dataset)
    try:
        parsed = [parse_rule(rule) for rule in rules]
    except GateSyntaxError as exc:
        raise UsageError(str(exc)) from None
    with _champion_repository(options) as repository:
        repository.check_schema()
        gate_id = repository.set_gate(parsed, _who(), checkpoint=checkpoint, dataset=dataset)
    scope = f"checkpoint {quoted(checkpoint)}" if checkpoint else f"dataset {quoted(dataset or '', 60)}"
    shown = ", ".join(text for rule in parsed for text in rule_text(rule)) or "no rules (the less specific apply)"
    click.echo(f"gate {gate_id} of {scope}: {shown}")


@gate.command("show", epilog=EPILOG)
@click.option("--checkpoint", help="The checkpoint whose gate to show.")
@click.option("--dataset", help="The dataset whose gate to show.")
@_format_option
@_database_options
@_logging_options
def gate_show(checkpoint: str | None, dataset: str | None, **options: Any) -> None:
    """Show the gate in force for a checkpoint or a dataset (its own rules, not the inherited ones)."""
    from .gates import rule_text
    from .report import to_json

    _start_logging(options)
    _gate_scope(checkpoint, dataset)
    with _champion_repository(options) as repository:
        repository.check_schema()
        found = repository.gate_in_force(checkpoint=checkpoint, dataset=dataset)
    texts = [text for rule in (found["parsed"] if found else ()) for text in rule_text(rule)]
    if options["output_format"] == "json":
        shown = {key: found[key] for key in ("gate_id", "created_by", "created_at")} if found else {}
        click.echo(to_json({**shown, "rules": texts}))
    elif found is None:
        click.echo("no gate of its own: the less specific rules apply")
    else:
        made = f"{printable(found['created_by'], 80)}, {found['created_at']:%Y-%m-%d %H:%M}"
        click.echo(f"gate {found['gate_id']} ({made}):")
        click.echo("\n".join(f"  {printable(text)}" for text in texts) or "  no rules (the less specific apply)")


@cli.command(epilog=EPILOG)
@click.option("--run", "run_ids", type=click.IntRange(1, MAX_BIGINT), multiple=True,
              help="A run; repeat it for several (the runs of one evaluation, say).")  # fmt: skip
@click.option("--checkpoint", "checkpoints", multiple=True,
              help="A checkpoint's latest runs; repeat it with --dataset to compare checkpoints.")  # fmt: skip
@click.option("--dataset", help="Only this dataset (alone: compare every checkpoint evaluated on it).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for report.html and the PNG figures (made if missing).")  # fmt: skip
@_format_option
@_database_options
@_logging_options
def report(
    run_ids: tuple[int, ...], checkpoints: tuple[str, ...], dataset: str | None, out_dir: Path, **options: Any
) -> None:
    """Write a report: one self-contained HTML file (opens without a network) and PNG figures.

    \b
    --run N [--run M ...]             one run (several: side by side)
    --checkpoint NAME [--dataset D]   a checkpoint's latest run on each dataset (or on D)
    --dataset D [--checkpoint A ...]  a comparison on D: the latest run of each checkpoint (or of A, ...)
    Each shows the confusion matrix (counts and normalised), per-class precision/recall/F1, ROC and
    precision-recall curves for two classes, the gate rules with pass/fail, and the dataset's metric
    history with its champion marked.
    """
    from .reporting.build import build

    _start_logging(options)
    with _champion_repository(options) as repository:
        repository.check_schema()
        files, data = build(repository, out_dir, run_ids=run_ids, checkpoints=checkpoints, dataset=dataset)
    if options["output_format"] == "json":
        from .report import to_json

        click.echo(to_json({"html": str(files.html), "pngs": [str(p) for p in files.pngs],
                            "runs": [run.run_id for run in data.runs]}))  # fmt: skip
    else:
        click.echo(f"report of {len(data.runs)} run(s): {printable(files.html)} ({len(files.pngs)} figures)")


@cli.group(epilog=EPILOG)
def dataset() -> None:
    """The dataset registry: what checkpoints are evaluated on (ckpt_eval.datasets)."""


def _name_list(value: str | None, file: Path | None, what: str) -> tuple[str, ...] | None:
    """Names from 'a,b,c' or from a file with one name per line (names with commas, long lists)."""
    if value is not None and file is not None:
        raise UsageError(f"give {what} either inline or in a file, not both")
    if file is not None:
        from .credentials import read_bounded_file

        data, _ = read_bounded_file(file, 4 * 1024 * 1024, what)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{printable(file)} is not UTF-8 text") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
    elif value is not None:
        names = [part.strip() for part in value.split(",")]
    else:
        return None
    if not names or any(not name for name in names):
        raise UsageError(f"{what}: empty name in the list")
    return tuple(names)


@dataset.command("add", epilog=EPILOG)
@click.argument("name")
@click.option(
    "--kind",
    required=True,
    type=click.Choice(DATASET_KINDS),
    help="Where the rows come from.",
)
@click.option(
    "--source",
    help="table: schema.table (the owner grants the app role SELECT on it); csv: a file in the data "
    "directory; idx: fashion_mnist or mnist.",
)
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--features", help="Feature columns in input order, comma-separated.")
@click.option(
    "--features-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Feature columns in input order, one per line.",
)
@click.option("--label-column", help="The column holding each row's label.")
@click.option("--class-names", help="Label values in class-index order, comma-separated (e.g. R,M).")
@click.option("--description", help="Free text shown by dataset show.")
@_database_options
@_logging_options
def dataset_add(name: str, **options: Any) -> None:
    """Register dataset NAME (changing or removing one is the schema owner's job)."""
    from .datasets import DatasetDefinition

    _start_logging(options)
    if not 1 <= len(name) <= MAX_NAME_LENGTH or not name.isprintable():
        raise UsageError(f"dataset name {quoted(name, 60)} must be 1 to {MAX_NAME_LENGTH} printable characters")
    definition = DatasetDefinition(
        name=name,
        kind=options["kind"],
        source=options["source"],
        split=options["split"],
        feature_columns=_name_list(options["features"], options["features_file"], "feature columns"),
        label_column=options["label_column"],
        class_names=_name_list(options["class_names"], None, "class names"),
    )
    try:
        definition.validate()
    except DataError as exc:
        raise UsageError(str(exc)) from None
    with _open_repository(options) as repository:
        repository.check_schema()
        repository.add_dataset(
            {
                "name": definition.name,
                "kind": definition.kind,
                "source": definition.source,
                "split": definition.split,
                "feature_columns": list(definition.feature_columns) if definition.feature_columns else None,
                "label_column": definition.label_column,
                "class_names": list(definition.class_names) if definition.class_names else None,
                "description": options["description"],
            }
        )
    click.echo(f"added dataset {quoted(name, 60)} ({definition.kind})")


@dataset.command("list", epilog=EPILOG)
@_format_option
@_database_options
@_logging_options
def dataset_list(**options: Any) -> None:
    """Show every registered dataset."""
    from .report import DATASET_COLUMNS, dataset_rows, table, to_json

    _start_logging(options)
    with _open_repository(options) as repository:
        repository.check_schema()
        rows = repository.datasets()
    if options["output_format"] == "json":
        click.echo(to_json({"datasets": rows}))
    else:
        click.echo(table(dataset_rows(rows), DATASET_COLUMNS) if rows else "no datasets registered")


@dataset.command("show", epilog=EPILOG)
@click.argument("name")
@_format_option
@_database_options
@_logging_options
def dataset_show(name: str, **options: Any) -> None:
    """Show dataset NAME: its definition, columns, and the checkpoints evaluated on it."""
    from .report import to_json

    _start_logging(options)
    with _open_repository(options) as repository:
        repository.check_schema()
        row = repository.dataset(name)
        if row is None:
            raise UsageError(f"no dataset named {quoted(name, 60)} is registered (ckpt-eval dataset list)")
        pairs = repository.dataset_pairs(name)
    if options["output_format"] == "json":
        click.echo(to_json({"dataset": row, "evaluations": pairs}))
        return
    for key in ("name", "kind", "source", "split", "label_column", "description", "fingerprint", "fingerprinted_at"):
        value = row.get(key)
        click.echo(f"{key + ':':17} {'-' if value is None else printable(value)}")
    for key in ("class_names", "feature_columns"):
        values = row.get(key) or []
        click.echo(f"{key + ':':17} {', '.join(printable(v, 100) for v in values) if values else '-'}")
    click.echo(f"{'evaluations:':17} {len(pairs)}")
    for pair in pairs:
        version = pair["dataset_fingerprint"]
        click.echo(
            f"  checkpoint {pair['checkpoint_id']} {quoted(pair['checkpoint_name'])}: {pair['status']}"
            + (f" (evaluated on version {version[:12]})" if version else "")
        )


@cli.command(epilog=EPILOG)
@click.option("--arch", required=True, help="Architecture name (fashion_cnn, digits_mlp).")
@click.option("--dataset", required=True, help="Dataset name; trains on its train split.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the state dict (.pt/.pth, or .safetensors).",
)
@click.option("--epochs", type=click.IntRange(0, 100_000), default=5, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("--lr", type=Finite(0, 100, low_open=True), default=0.05, show_default=True, help="SGD learning rate.")
@_data_dir_option
@_logging_options
def train(arch: str, dataset: str, out: Path, epochs: int, seed: int, lr: float, **options: Any) -> None:
    """Train a small checkpoint reproducibly (demo and test checkpoints)."""
    from .checkpoints import sha256_file
    from .datasets import load_dataset
    from .train import save_checkpoint, train_model

    _start_logging(options)
    data = load_dataset(dataset, options["data_dir"], split="train")
    try:
        model = train_model(arch, data, epochs=epochs, seed=seed, lr=lr)
    except CheckpointError as exc:  # architecture and dataset do not fit together
        raise UsageError(str(exc)) from None
    save_checkpoint(model, out)
    click.echo(f"wrote {printable(out)} (sha256 {sha256_file(out)})")


@cli.command(epilog=EPILOG)
@_format_option
@_logging_options
def architectures(output_format: str, **options: Any) -> None:
    """List the installed architectures: their package and version, input, classes, and status.

    Architectures come from installed packages (entry-point group ckpt_eval.architectures). A plugin
    that fails to load is listed with the reason; only the checkpoints that use it fail. No database
    or secret is needed.
    """
    from .architectures import installed
    from .report import table, to_json

    _start_logging(options)
    entries = installed()
    if output_format == "json":
        click.echo(to_json({"architectures": [entry.as_dict() for entry in entries]}))
        return
    rows = []
    for entry in entries:
        spec = entry.architecture.spec if entry.architecture is not None else None
        classes = None
        if spec is not None:
            classes = str(spec.num_classes)
            if spec.class_names is not None:
                classes += f" ({', '.join(spec.class_names)})"
        rows.append(
            {
                "name": entry.name,
                "package": entry.package,
                "version": entry.version,
                "input": "x".join(map(str, spec.input.shape)) if spec else None,
                "classes": classes,
                "description": spec.description if spec else None,
                "status": "ok" if entry.ok else "broken (see below)",
            }
        )
    columns = [(key, key) for key in ("name", "package", "version", "input", "classes", "description", "status")]
    lines = [table(rows, columns) if rows else "no architectures installed"]
    # The table cuts long cells; a broken plugin's whole reason is what the operator needs to read.
    lines += [
        f"{printable(entry.name)} ({printable(entry.package)} {printable(entry.version)}): {entry.status}"
        for entry in entries
        if not entry.ok
    ]
    text = "\n".join(lines)
    click.echo(text)


def _start_logging(options: dict[str, Any]) -> None:
    logs.configure(options.pop("log_level"), options.pop("log_format"))


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def _show_click_error(exc: click.ClickException) -> None:
    """click's own rendering, with the message (which may echo a value from an environment variable) escaped."""
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        click.echo(ctx.get_usage(), err=True)
        click.echo(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.\n", err=True)
    click.echo(f"Error: {printable(exc.format_message())}", err=True)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An unexpected error in a helper thread is logged (escaped), never printed raw by Python."""
    log.error("internal error in thread %s: %s", args.thread.name if args.thread else "?", args.exc_type.__name__)
    log.debug("traceback", exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    global _environment_password
    _environment_password = take_password_from_environment()
    signal.signal(signal.SIGTERM, _terminate)
    threading.excepthook = _log_thread_exception
    try:
        # Without standalone mode click returns the code of an Exit raised by a command.
        result = cli.main(args=argv, prog_name="ckpt-eval", standalone_mode=False)
        return result if isinstance(result, int) else EXIT_OK
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("ckpt-eval: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        _show_click_error(exc)
        return exc.exit_code
    except CkptEvalError as exc:
        if logging.getLogger().handlers:
            log.error("%s", exc)
        else:  # failed before logging was configured
            click.echo(f"ckpt-eval: error: {printable(exc)}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("ckpt-eval: interrupted", err=True)
        return EXIT_INTERRUPTED
    except Exception:
        log.debug("internal error", exc_info=True)
        click.echo(
            f"ckpt-eval: internal error: {sys.exc_info()[0].__name__} (run with --log-level debug for details)",  # type: ignore[union-attr]
            err=True,
        )
        return 70


def entrypoint() -> NoReturn:
    code = main()
    # Everything is written and every connection closed; what remains is tearing down an interpreter
    # that imported torch, about 0.4 s of nothing a user waits for. Flush and leave.
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe (`ckpt-eval status | head`): nothing more to say
        code = code or 1
    os._exit(code)
