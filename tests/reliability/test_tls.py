"""TLS: the real job against a PostgreSQL that admits the app role only over TLS (``hostssl``).

The test makes its own throwaway CA (``cryptography``), a server certificate for ``localhost`` and
127.0.0.1 signed by it, a second server certificate (same CA) that names only ``db.example``, and an
unrelated CA. With ``sslmode=verify-full`` and the right CA the job connects, by IP and by name, and
evaluates (exit 3: the undertrained demo checkpoint fails its gate). A CA that did not sign the server's
certificate, a certificate for another name, and a connection without TLS are refused with exit 77 before
anything is claimed.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.deployment import APP_PASSWORD, REPO, Deployment, Result, new_deployment
from tests.support.pgcluster import PgCluster, create_app_database

from .workers import run_counts

HOSTSSL = ["hostssl all ckpt_eval_app 127.0.0.1/32 scram-sha-256"]
DEMO = ("digits-mlp-good", "digits-mlp-undertrained")


# --------------------------------------------------------------------------- a throwaway PKI


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def write(self, cert_path: Path, key_path: Path | None = None) -> None:
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        if key_path is not None:
            key_path.write_bytes(
                self.key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def make_server_cert(ca: Issued, common_name: str, dns: list[str], ips: list[str]) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca_file: Path  # the CA that signed both server certificates
    other_ca_file: Path  # a CA that signed nothing the server presents
    localhost: Issued  # CN/SAN localhost + IP 127.0.0.1
    db_example: Issued  # SAN db.example only


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca("ckpt-eval test CA")
    other = make_ca("some other CA")
    ca.write(directory / "ca.pem")
    other.write(directory / "other-ca.pem")
    return Pki(
        directory=directory,
        ca_file=directory / "ca.pem",
        other_ca_file=directory / "other-ca.pem",
        localhost=make_server_cert(ca, "localhost", ["localhost"], ["127.0.0.1"]),
        db_example=make_server_cert(ca, "db.example", ["db.example"], []),
    )


# --------------------------------------------------------------------------- servers that speak only TLS


def start_tls_cluster(server_cert: Issued) -> PgCluster:
    server = PgCluster()
    try:
        server.init()
        tls = server.base / "tls"
        tls.mkdir()
        cert_file, key_file = tls / "server.crt", tls / "server.key"
        server_cert.write(cert_file, key_file)
        key_file.chmod(0o600)
        if server.owner:  # as root the cluster runs as postgres, which must own (and alone read) the key
            subprocess.run(["chown", "-R", f"{server.owner}:", str(tls)], check=True)
        with (server.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"ssl = on\nssl_cert_file = '{cert_file}'\nssl_key_file = '{key_file}'\n"
                "ssl_min_protocol_version = 'TLSv1.2'\n"
            )
        server.write_hba(HOSTSSL)
        server.start()
        server.wait_ready()
        return server
    except BaseException:
        server.destroy()
        raise


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[PgCluster]:
    server = start_tls_cluster(pki.localhost)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="module")
def misnamed_tls_server(pki: Pki) -> Iterator[PgCluster]:
    server = start_tls_cluster(pki.db_example)
    try:
        yield server
    finally:
        server.destroy()


_databases = iter(range(1, 1000))


def make_job(server: PgCluster, tmp_path: Path) -> Deployment:
    return new_deployment(server, tmp_path, dbname=f"ckpt_eval_tls{next(_databases)}")


def run_job(job: Deployment, **credentials: object) -> tuple[Result, float]:
    """The real job with these credential settings (vault-encrypted, as always)."""
    job.write_credentials(**credentials)
    started = time.monotonic()
    result = job.ckpt_eval("run")
    return result, time.monotonic() - started


def tls_session(server: PgCluster, dbname: str, **params: object) -> str:
    """Connect like the job would and ask both ends whether the session is encrypted, and how.

    The server's view comes from the sslinfo extension (in 9.4 as in 15; the pg_stat_ssl view is 9.5+,
    and the statements of the tests must parse on Greenplum 6's 9.4 kernel: tests/support/pg94.py);
    the client's from libpq (PQsslInUse).
    """
    server.psql("CREATE EXTENSION IF NOT EXISTS sslinfo", dbname=dbname)
    with psycopg.connect(
        host=params.pop("host", "127.0.0.1"),
        port=server.port,
        dbname=dbname,
        user="ckpt_eval_app",
        password=APP_PASSWORD,
        connect_timeout=5,
        **params,  # type: ignore[arg-type]
    ) as conn:
        [(ssl, version, cipher)] = conn.execute("SELECT ssl_is_used(), ssl_version(), ssl_cipher()").fetchall()
        client_side = conn.pgconn.ssl_in_use
    assert ssl is True
    assert client_side is True
    return f"{version} {cipher}"


# --------------------------------------------------------------------------- scenarios


@pytest.mark.scenario("TLS verify-full", "the job connects with the right CA and evaluates: exit 3, 2 runs written")
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_job_over_verified_tls(tls_server: PgCluster, pki: Pki, tmp_path: Path, figure, host: str) -> None:
    job = make_job(tls_server, tmp_path)
    result, seconds = run_job(job, host=host, sslmode="verify-full", sslrootcert=str(pki.ca_file))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert run_counts(job) == dict.fromkeys(DEMO, 1)
    session = tls_session(tls_server, job.dbname, host=host, sslmode="verify-full", sslrootcert=str(pki.ca_file))
    figure(f"exit 3 in {seconds:.1f} s, 2 runs; session {session}")


@dataclass(frozen=True)
class Refusal:
    server: str  # which fixture: the localhost certificate or the db.example one
    credentials: Callable[[Pki], dict[str, object]]
    fragments: tuple[str, ...]
    exit_code: int = 77


REFUSALS = {
    "ca-from-another-ca": Refusal(
        "tls_server",
        lambda pki: {"sslmode": "verify-full", "sslrootcert": str(pki.other_ca_file)},
        ("certificate verify failed",),
    ),
    "certificate-for-another-name": Refusal(
        "misnamed_tls_server",
        lambda pki: {"sslmode": "verify-full", "sslrootcert": str(pki.ca_file)},
        ('server certificate for "db.example"', 'does not match host name "127.0.0.1"'),
    ),
    "ca-file-missing": Refusal(
        "tls_server",
        lambda pki: {"sslmode": "verify-full", "sslrootcert": str(pki.directory / "no-such-ca.pem")},
        ('root certificate file "', 'no-such-ca.pem" does not exist'),
        exit_code=78,  # configuration (README, exit codes); connection.py's _CONFIG_MARKERS mean it so
    ),
    "sslmode-disable": Refusal(
        "tls_server",
        lambda pki: {"sslmode": "disable"},
        ('no pg_hba.conf entry for host "127.0.0.1", user "ckpt_eval_app"', "no encryption"),
    ),
}


@pytest.mark.scenario(
    "TLS refused", "wrong CA, wrong host name or no TLS: exit 77 (missing CA file: 78) at once, nothing claimed"
)
@pytest.mark.parametrize("case_id", list(REFUSALS))
def test_job_refused_without_verified_tls(
    request: pytest.FixtureRequest, pki: Pki, tmp_path: Path, figure, case_id: str
) -> None:
    case = REFUSALS[case_id]
    server: PgCluster = request.getfixturevalue(case.server)
    job = make_job(server, tmp_path)
    result, seconds = run_job(job, **case.credentials(pki))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    shown = lines[0].split(f"/{job.dbname}: ", 1)[-1] if lines else "-"
    figure(f"exit {result.returncode} in {seconds:.1f} s: {shown[:100]}")
    assert result.returncode == case.exit_code, result.stdout + result.stderr
    assert len(lines) == 1, result.stderr  # one line, no retry warnings: a refusal is not "unavailable"
    for fragment in case.fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr
    assert APP_PASSWORD not in result.stdout + result.stderr
    assert run_counts(job) == {}
    assert job.rows("SELECT DISTINCT status FROM ckpt_eval.evaluations") == [["pending"]]


@pytest.mark.scenario("TLS name check is the cause", "the db.example certificate chains to the CA: verify-ca connects")
def test_misnamed_certificate_is_refused_only_for_its_name(misnamed_tls_server: PgCluster, pki: Pki, figure) -> None:
    """The control of 'certificate-for-another-name': the same server, CA and credentials with
    verify-ca (which checks the chain but not the name) connect, so only the host name check refuses."""
    dbname = f"ckpt_eval_tls{next(_databases)}"
    create_app_database(misnamed_tls_server, REPO / "init.sql", APP_PASSWORD, dbname=dbname)
    session = tls_session(misnamed_tls_server, dbname, sslmode="verify-ca", sslrootcert=str(pki.ca_file))
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        tls_session(misnamed_tls_server, dbname, sslmode="verify-full", sslrootcert=str(pki.ca_file))
    figure(f"verify-ca: {session.split()[0]}; verify-full: name mismatch")
