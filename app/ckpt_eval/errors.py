"""Error types. Each carries the process exit code; only the CLI turns them into one.

Messages must never contain a secret: callers build them from file names, keys and
error classes, never from decrypted values.
"""

from __future__ import annotations


class CkptEvalError(Exception):
    """Base class: an error the CLI reports as one line and maps to ``exit_code``."""

    exit_code: int = 70


class UsageError(CkptEvalError):
    """Bad command-line usage (click's convention, not sysexits' 64)."""

    exit_code = 2


class DataError(CkptEvalError):
    """Input data is malformed (bad IDX file, unreadable checkpoint given on the command line)."""

    exit_code = 65  # EX_DATAERR


class MissingInputError(CkptEvalError):
    """A file or directory the command needs does not exist."""

    exit_code = 66


class DatabaseUnavailable(CkptEvalError):
    """The database could not be reached or kept failing after bounded retries."""

    exit_code = 75


class AuthenticationError(CkptEvalError):
    """Wrong vault password, or the database refused the credentials."""

    exit_code = 77


class ConfigError(CkptEvalError):
    """The configuration or the credentials file is invalid."""

    exit_code = 78


class CheckpointError(CkptEvalError):
    """One checkpoint cannot be evaluated; recorded as that checkpoint's failed run."""

    exit_code = 65


class DatasetError(DataError):
    """A dataset is missing or malformed."""


class DatasetMissing(MissingInputError):
    """A dataset's files are not in the data directory."""


class DatabasePrivilegeError(ConfigError):
    """The database role lacks a privilege the job needs (a missing grant: fix the deployment)."""


class SchemaMismatch(ConfigError):
    """The ckpt_eval schema is missing, or older or newer than this version of ckpt-eval expects."""


class DatabaseRejected(CkptEvalError):
    """The database refused a statement in a way no retry or configuration change can fix: a defect."""

    exit_code = 70


class LeaseLost(CkptEvalError):
    """Another worker holds the checkpoint now; this worker must not write its result."""

    exit_code = 75


class EvaluationAborted(Exception):
    """The caller asked to stop between batches or while parsing (the lease was lost, or a signal arrived)."""


EXIT_OK = 0
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130
