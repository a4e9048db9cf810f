"""The ``ckpt-eval`` command line: the only place where errors become exit codes."""

from __future__ import annotations

import logging
import signal
import sys
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

if TYPE_CHECKING:
    from .db.connection import RetryPolicy

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
  ckpt-eval train --arch digits_mlp --dataset digits --out checkpoints/new.pt --epochs 5 --seed 1

\b
Exit codes: 0 all evaluated and passed; 3 a checkpoint failed or failed its gate; 2 usage;
65 bad data; 66 missing input; 75 database unavailable; 77 vault or database authentication;
78 configuration; 70 internal error; 130 interrupted.
"""


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
            type=click.IntRange(min=1),
            default=5,
            show_default=True,
            envvar="CKPT_EVAL_DB_RETRIES",
            help="Connection attempts before giving up with exit 75 [env CKPT_EVAL_DB_RETRIES].",
        ),
        click.option(
            "--db-retry-seconds",
            type=click.FloatRange(min=0),
            default=60.0,
            show_default=True,
            envvar="CKPT_EVAL_DB_RETRY_SECONDS",
            help="Upper bound on the time spent retrying the database [env CKPT_EVAL_DB_RETRY_SECONDS].",
        ),
        click.option(
            "--statement-timeout",
            type=click.IntRange(min=1),
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
    type=click.IntRange(min=1),
    multiple=True,
    metavar="N",
    help="Only these checkpoints (repeatable).",
)
@click.option("--force", is_flag=True, help="Queue already evaluated checkpoints again: a new run, history kept.")
@click.option("--failed", is_flag=True, help="Queue checkpoints whose latest run failed again.")
@click.option("--dry-run", is_flag=True, help="List what would be evaluated; change nothing.")
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=2),
    default=300.0,
    show_default=True,
    envvar="CKPT_EVAL_LEASE_SECONDS",
    help="Lease on a claimed checkpoint, renewed every third of it [env CKPT_EVAL_LEASE_SECONDS].",
)
@click.option(
    "--torch-threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    envvar="CKPT_EVAL_TORCH_THREADS",
    help="CPU threads for inference; 0 keeps PyTorch's default (one per core). Several jobs on one host "
    "run faster with cores/jobs each [env CKPT_EVAL_TORCH_THREADS].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    envvar="CKPT_EVAL_BATCH_SIZE",
    help="Evaluation batch size [env CKPT_EVAL_BATCH_SIZE].",
)
@_format_option
@_checkpoint_root_option
@_data_dir_option
@_database_options
@_logging_options
def run(**options: Any) -> None:
    """Claim pending checkpoints, evaluate each one, record metrics and a verdict."""
    from .config import Settings
    from .db.repository import Repository
    from .job import Job, Selection
    from .report import PLAN_COLUMNS, summary_json, summary_text, table, to_json

    _start_logging(options)
    settings = Settings(
        credentials_path=options["credentials"],
        vault_password_file=options["vault_password_file"],
        checkpoint_root=options["checkpoint_root"],
        data_dir=options["data_dir"],
        lease_seconds=options["lease_seconds"],
        batch_size=options["batch_size"],
        statement_timeout_ms=options["statement_timeout"] * 1000,
        retry=_retry_policy(options["db_retries"], options["db_retry_seconds"]),
    )
    selection = Selection(tuple(options["checkpoint_ids"]), options["force"], options["failed"])
    if options["torch_threads"]:
        import torch

        torch.set_num_threads(options["torch_threads"])
    creds = _load_credentials(settings.credentials_path, settings.vault_password_file)

    def new_repository() -> Repository:
        return Repository(creds, settings.retry, **settings.connect_options())

    with new_repository() as repository:
        log.debug("connected; Greenplum-family server: %s", repository.is_greenplum())
        if options["dry_run"]:
            if selection.ids:
                repository.check_ids_exist(selection.ids)
            planned = repository.planned(selection.ids or None, selection.force, selection.failed)
            if options["output_format"] == "json":
                click.echo(to_json({"would_evaluate": planned}))
            else:
                click.echo(table(planned, PLAN_COLUMNS) if planned else "nothing would be evaluated")
            return
        with _progress(repository, selection) as on_outcome:
            job = Job(settings, repository, new_repository, on_outcome=on_outcome)
            summary = job.run(selection)
    click.echo(summary_json(summary) if options["output_format"] == "json" else summary_text(summary))
    if not summary.all_passed:
        raise click.exceptions.Exit(EXIT_SOME_FAILED)


class _progress:
    """A progress bar over the checkpoints of this run, only when stderr is a terminal."""

    def __init__(self, repository: Any, selection: Any) -> None:
        self._bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            total = len(repository.planned(selection.ids or None, selection.force, selection.failed))
            self._bar = tqdm(total=total, unit="ckpt", desc="evaluating", file=sys.stderr, leave=False)

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
    """Show every registered checkpoint with its job state and latest result."""
    from .db.repository import Repository
    from .report import STATUS_COLUMNS, table, to_json

    _start_logging(options)
    creds = _load_credentials(options["credentials"], options["vault_password_file"])
    policy = _retry_policy(options["db_retries"], options["db_retry_seconds"])
    with Repository(creds, policy, statement_timeout_ms=options["statement_timeout"] * 1000) as repository:
        rows = repository.status()
    if options["output_format"] == "json":
        click.echo(to_json({"checkpoints": rows}))
    else:
        click.echo(table(rows, STATUS_COLUMNS) if rows else "no checkpoints registered")


@cli.command(epilog=EPILOG)
@click.argument("path")
@click.option("--arch", required=True, help="Architecture name (fashion_cnn, digits_mlp).")
@click.option("--dataset", required=True, help="Dataset name (fashion_mnist, mnist, digits).")
@click.option("--name", help="Unique checkpoint name [default: the file name without extension].")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), help="Gate: minimum accuracy [default 0.7].")
@click.option("--min-f1", type=click.FloatRange(0, 1), help="Gate: minimum macro-F1 [default 0.7].")
@_checkpoint_root_option
@_database_options
@_logging_options
def register(
    path: str,
    arch: str,
    dataset: str,
    name: str | None,
    min_accuracy: float | None,
    min_f1: float | None,
    **options: Any,
) -> None:
    """Register the checkpoint at PATH (relative to the checkpoint root) for evaluation.

    The file is checked the way a run will check it (inside the root, loadable into ARCH)
    and its sha256 is stored, so a later change to the file fails its run.
    """
    from .checkpoints import load_checkpoint
    from .datasets import DATASET_NAMES
    from .db.repository import Repository
    from .models import ARCHITECTURES

    _start_logging(options)
    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown architecture {arch!r} (known: {', '.join(sorted(ARCHITECTURES))})")
    if dataset not in DATASET_NAMES:
        raise UsageError(f"unknown dataset {dataset!r} (known: {', '.join(DATASET_NAMES)})")
    root: Path = options["checkpoint_root"]
    if not root.is_dir():
        raise MissingInputError(f"checkpoint root {root} is not a directory")
    try:
        loaded = load_checkpoint(root, path, arch, None)
    except CheckpointError as exc:
        raise DataError(str(exc)) from None
    checkpoint_name = name or Path(path).stem
    creds = _load_credentials(options["credentials"], options["vault_password_file"])
    policy = _retry_policy(options["db_retries"], options["db_retry_seconds"])
    with Repository(creds, policy, statement_timeout_ms=options["statement_timeout"] * 1000) as repository:
        checkpoint_id = repository.register(
            name=checkpoint_name,
            path=path,
            arch=arch,
            dataset=dataset,
            sha256=loaded.sha256,
            min_accuracy=min_accuracy,
            min_f1_macro=min_f1,
        )
    click.echo(f"registered checkpoint {checkpoint_id} {checkpoint_name!r} ({path}, sha256 {loaded.sha256})")


@cli.command(epilog=EPILOG)
@click.option("--arch", required=True, help="Architecture name (fashion_cnn, digits_mlp).")
@click.option("--dataset", required=True, help="Dataset name; trains on its train split.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the state dict (.pt/.pth, or .safetensors).",
)
@click.option("--epochs", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True, help="SGD learning rate."
)
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
    click.echo(f"wrote {out} (sha256 {sha256_file(out)})")


def _start_logging(options: dict[str, Any]) -> None:
    logs.configure(options.pop("log_level"), options.pop("log_format"))


def _terminate(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    global _environment_password
    _environment_password = take_password_from_environment()
    signal.signal(signal.SIGTERM, _terminate)
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
        exc.show()
        return exc.exit_code
    except CkptEvalError as exc:
        if logging.getLogger().handlers:
            log.error("%s", exc)
        else:  # failed before logging was configured
            click.echo(f"ckpt-eval: error: {exc}", err=True)
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
    sys.exit(main())
