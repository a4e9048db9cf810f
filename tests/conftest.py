"""Fixtures shared by the integration and reliability suites (see tests/support/deployment.py)."""

from tests.support.deployment import cluster, deployment

__all__ = ["cluster", "deployment"]
