"""How connection failures are classified: refusals are final (exit 77), outages are retried (exit 75)."""

from __future__ import annotations

import psycopg
import pytest

from ckpt_eval.credentials import DbCredentials
from ckpt_eval.db.connection import classify_connect_error
from ckpt_eval.db.errors import Transient
from ckpt_eval.errors import AuthenticationError

CREDS = DbCredentials(host="10.0.0.5", port=5432, dbname="ckpt_eval", user="ckpt_eval_app", password="pw-1b7e")


@pytest.mark.parametrize(
    "server_says",
    [
        'FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "ckpt_eval_app", database "ckpt_eval"',
        'FATAL:  pg_hba.conf rejects connection for host "10.0.0.9", user "ckpt_eval_app", database "ckpt_eval"',
        'FATAL:  password authentication failed for user "ckpt_eval_app"',
    ],
)
def test_a_refusal_is_an_authentication_error_with_the_servers_reason(server_says: str) -> None:
    text = f'connection to server at "10.0.0.5", port 5432 failed: {server_says}'
    error = classify_connect_error(psycopg.OperationalError(text), CREDS)
    assert isinstance(error, AuthenticationError)
    assert str(error) == f"database refused ckpt_eval_app@10.0.0.5:5432/ckpt_eval: {server_says[len('FATAL:  ') :]}"
    assert "pw-1b7e" not in str(error)


def test_a_server_that_does_not_answer_is_retried() -> None:
    text = 'connection to server at "10.0.0.5", port 5432 failed: Connection refused'
    assert isinstance(classify_connect_error(psycopg.OperationalError(text), CREDS), Transient)
