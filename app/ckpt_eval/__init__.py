"""ckpt-eval: evaluate model checkpoints registered in Greenplum/PostgreSQL and record their metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ckpt-eval")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
