"""Vault password handling and decryption of db.credentials, against the real ansible-vault format."""

from __future__ import annotations

import io
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ckpt_eval import credentials, redaction
from ckpt_eval.credentials import (
    DbCredentials,
    decrypt_credentials,
    encrypt_mapping,
    read_password_file,
    resolve_vault_password,
    take_password_from_environment,
)
from ckpt_eval.errors import AuthenticationError, CkptEvalError, ConfigError, MissingInputError

VAULT_PW = b"correct-horse-battery-staple"
WRONG_PW = b"tr0ub4dor-and-3"
DB_PW = "Db-Pa55word-Never-Leak"

BASE = {"host": "db.example.org", "port": 5432, "dbname": "registry", "user": "evaluator", "password": DB_PW}
FULL = {**BASE, "sslmode": "verify-full", "sslrootcert": "/etc/ssl/ca.pem", "connect_timeout": 7}


@pytest.fixture(autouse=True)
def _clear_secrets() -> Iterator[None]:
    redaction._secrets.clear()
    yield
    redaction._secrets.clear()


def write_vault(tmp_path: Path, data: object, password: bytes = VAULT_PW, name: str = "db.credentials") -> Path:
    """Encrypt ``data`` (a mapping, or raw text/bytes) with the real vault code and write it."""
    path = tmp_path / name
    if isinstance(data, dict):
        path.write_text(encrypt_mapping(data, password))
    else:
        path.write_bytes(ansible_vault_lib(password).encrypt(data))
    return path


def ansible_vault_lib(password: bytes):
    from ansible.parsing.vault import VaultLib, VaultSecret

    return VaultLib([("default", VaultSecret(password))])


def assert_no_secrets(message: str) -> None:
    assert DB_PW not in message
    assert VAULT_PW.decode() not in message
    assert WRONG_PW.decode() not in message


def split_vault(vaulttext: str) -> tuple[str, bytes]:
    """Header line and the inner payload (salt_hex \\n hmac_hex \\n ciphertext_hex)."""
    header, *body = vaulttext.strip().splitlines()
    return header, bytes.fromhex("".join(body))


def join_vault(header: str, inner: bytes) -> str:
    hexed = inner.hex()
    return header + "\n" + "\n".join(hexed[i : i + 80] for i in range(0, len(hexed), 80)) + "\n"


def _other_hex_digit(char: int) -> int:
    return ord("1") if char == ord("0") else ord("0")


# --------------------------------------------------------------------------- decrypt_credentials: happy paths


def test_decrypt_with_all_optional_keys(tmp_path: Path) -> None:
    creds = decrypt_credentials(write_vault(tmp_path, FULL), VAULT_PW)
    assert creds == DbCredentials(
        host="db.example.org",
        port=5432,
        dbname="registry",
        user="evaluator",
        password=DB_PW,
        sslmode="verify-full",
        sslrootcert="/etc/ssl/ca.pem",
        connect_timeout=7,
    )
    assert creds.connect_kwargs() == {
        "host": "db.example.org",
        "port": 5432,
        "dbname": "registry",
        "user": "evaluator",
        "password": DB_PW,
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ssl/ca.pem",
        "connect_timeout": 7,
    }


def test_decrypt_required_keys_only_leaves_optional_out_of_connect_kwargs(tmp_path: Path) -> None:
    creds = decrypt_credentials(write_vault(tmp_path, BASE), VAULT_PW)
    assert (creds.sslmode, creds.sslrootcert, creds.connect_timeout) == (None, None, None)
    assert set(creds.connect_kwargs()) == {"host", "port", "dbname", "user", "password"}


def test_decrypt_accepts_port_and_timeout_as_digit_strings(tmp_path: Path) -> None:
    creds = decrypt_credentials(write_vault(tmp_path, {**BASE, "port": "6432", "connect_timeout": "15"}), VAULT_PW)
    assert creds.port == 6432
    assert creds.connect_timeout == 15


def test_decrypt_registers_db_password_for_redaction(tmp_path: Path) -> None:
    decrypt_credentials(write_vault(tmp_path, BASE), VAULT_PW)
    assert redaction.scrub(f"FATAL: password {DB_PW} rejected") == "FATAL: password [REDACTED] rejected"


def test_decrypt_does_not_write_anything_next_to_the_vault(tmp_path: Path) -> None:
    path = write_vault(tmp_path, BASE)
    before = path.read_bytes()
    decrypt_credentials(path, VAULT_PW)
    assert sorted(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == before


def test_file_encrypted_by_ansible_core_vaultlib_opens(tmp_path: Path) -> None:
    path = write_vault(tmp_path, yaml.safe_dump(FULL))
    assert path.read_bytes().startswith(b"$ANSIBLE_VAULT;1.1;AES256\n")
    creds = decrypt_credentials(path, VAULT_PW)
    assert creds.password == DB_PW
    assert creds.sslmode == "verify-full"


def test_file_encrypted_by_ansible_core_with_vault_id_label_opens(tmp_path: Path) -> None:
    path = tmp_path / "db.credentials"
    path.write_bytes(ansible_vault_lib(VAULT_PW).encrypt(yaml.safe_dump(BASE), vault_id="prod"))
    assert path.read_bytes().startswith(b"$ANSIBLE_VAULT;1.2;AES256;prod\n")
    assert decrypt_credentials(path, VAULT_PW).password == DB_PW


def test_encrypt_mapping_output_is_readable_by_ansible_core(tmp_path: Path) -> None:
    vaulttext = encrypt_mapping(BASE, VAULT_PW)
    assert vaulttext.startswith("$ANSIBLE_VAULT;1.1;AES256\n")
    assert DB_PW not in vaulttext
    assert yaml.safe_load(ansible_vault_lib(VAULT_PW).decrypt(vaulttext)) == BASE


def test_encrypt_mapping_is_salted() -> None:
    assert encrypt_mapping(BASE, VAULT_PW) != encrypt_mapping(BASE, VAULT_PW)


def test_vault_with_crlf_line_endings_opens(tmp_path: Path) -> None:
    path = tmp_path / "db.credentials"
    path.write_bytes(encrypt_mapping(BASE, VAULT_PW).replace("\n", "\r\n").encode())
    assert decrypt_credentials(path, VAULT_PW).user == "evaluator"


# ----------------------------------------------------------------- decrypt_credentials: the file itself is wrong


def test_wrong_password_is_authentication_error(tmp_path: Path) -> None:
    path = write_vault(tmp_path, BASE)
    with pytest.raises(AuthenticationError) as info:
        decrypt_credentials(path, WRONG_PW)
    assert info.value.exit_code == 77
    message = str(info.value)
    assert str(path) in message
    assert "password" in message
    assert_no_secrets(message)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_wrong_password_does_not_register_anything_for_redaction(tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError):
        decrypt_credentials(write_vault(tmp_path, BASE), WRONG_PW)
    assert redaction.scrub(DB_PW) == DB_PW


def test_plaintext_yaml_credentials_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.credentials"
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError) as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 78
    message = str(info.value)
    assert "not ansible-vault encrypted" in message
    assert f"ansible-vault encrypt {path}" in message
    assert_no_secrets(message)


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\t\n"], ids=["empty", "newline", "whitespace"])
def test_empty_credentials_file_is_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "db.credentials"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="is empty") as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 78
    assert str(path) in str(info.value)


def test_missing_credentials_file_is_missing_input(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "db.credentials"
    with pytest.raises(MissingInputError) as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 66
    assert str(path) in str(info.value)


def test_credentials_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory") as info:
        decrypt_credentials(tmp_path, VAULT_PW)
    assert info.value.exit_code == 78


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_credentials_file(tmp_path: Path) -> None:
    path = write_vault(tmp_path, BASE)
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot be read"):
        decrypt_credentials(path, VAULT_PW)


@pytest.mark.parametrize("fraction", [0.5, 0.33, 0.9])
def test_truncated_vault_is_config_error(tmp_path: Path, fraction: float) -> None:
    vaulttext = encrypt_mapping(BASE, VAULT_PW)
    header_end = vaulttext.index("\n") + 1
    cut = header_end + int((len(vaulttext) - header_end) * fraction)
    path = tmp_path / "db.credentials"
    path.write_text(vaulttext[:cut])
    with pytest.raises(ConfigError, match="corrupted or truncated") as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 78
    assert str(path) in str(info.value)
    assert_no_secrets(str(info.value))


def test_vault_header_without_body_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "db.credentials"
    path.write_text("$ANSIBLE_VAULT;1.1;AES256\n")
    with pytest.raises(ConfigError) as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 78


@pytest.mark.parametrize("part", [0, 1, 2], ids=["salt", "hmac", "ciphertext"])
def test_tampered_hex_digit_is_authentication_error(tmp_path: Path, part: int) -> None:
    # Replace one hex digit by another in the salt, the HMAC or the ciphertext: the envelope stays
    # well-formed, so only the HMAC check can notice. The code reports it like a wrong password.
    header, inner = split_vault(encrypt_mapping(BASE, VAULT_PW))
    pieces = inner.split(b"\n")
    piece = bytearray(pieces[part])
    middle = len(piece) // 2
    piece[middle] = _other_hex_digit(piece[middle])
    pieces[part] = bytes(piece)
    path = tmp_path / "db.credentials"
    path.write_text(join_vault(header, b"\n".join(pieces)))
    with pytest.raises(AuthenticationError, match="tampered") as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 77
    assert str(path) in str(info.value)
    assert_no_secrets(str(info.value))


def test_non_hex_character_in_body_is_config_error(tmp_path: Path) -> None:
    vaulttext = encrypt_mapping(BASE, VAULT_PW)
    position = vaulttext.index("\n") + 10
    path = tmp_path / "db.credentials"
    path.write_text(vaulttext[:position] + "g" + vaulttext[position + 1 :])
    with pytest.raises(ConfigError, match="corrupted or truncated") as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 78


def test_flipped_outer_hex_digit_yielding_non_hex_payload_is_config_error(tmp_path: Path) -> None:
    # The body is hex of hex: turning the first pair into 7a makes the inner salt contain 'z'.
    header, inner = split_vault(encrypt_mapping(BASE, VAULT_PW))
    path = tmp_path / "db.credentials"
    path.write_text(join_vault(header, b"z" + inner[1:]))
    with pytest.raises(ConfigError, match="corrupted or truncated") as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 78


@pytest.mark.parametrize("offset", [3, 100, 200, 333, -4])
def test_any_single_hex_char_flip_fails_cleanly(tmp_path: Path, offset: int) -> None:
    vaulttext = encrypt_mapping(BASE, VAULT_PW)
    header_end = vaulttext.index("\n") + 1
    body = vaulttext[header_end:]
    hex_positions = [header_end + i for i, ch in enumerate(body) if ch in "0123456789abcdef"]
    position = hex_positions[offset]
    flipped = "0" if vaulttext[position] != "0" else "1"
    path = tmp_path / "db.credentials"
    path.write_text(vaulttext[:position] + flipped + vaulttext[position + 1 :])
    with pytest.raises((AuthenticationError, ConfigError)) as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code in (77, 78)
    assert str(path) in str(info.value)
    assert_no_secrets(str(info.value))


def test_leading_blank_line_with_right_password_is_not_reported_as_wrong_password(tmp_path: Path) -> None:
    path = tmp_path / "db.credentials"
    path.write_text("\n" + encrypt_mapping(BASE, VAULT_PW))
    outcome: object
    try:
        outcome = decrypt_credentials(path, VAULT_PW).password
    except CkptEvalError as exc:
        outcome = type(exc)
    # Either it opens (the header check allowed the blank line) or it is a format problem: never "wrong password".
    assert outcome in (DB_PW, ConfigError)


def test_unsupported_cipher_with_right_password_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "db.credentials"
    path.write_text(encrypt_mapping(BASE, VAULT_PW).replace(";AES256", ";AES", 1))
    with pytest.raises(ConfigError):
        decrypt_credentials(path, VAULT_PW)


# --------------------------------------------------------------------------- decrypt_credentials: bad content inside


@pytest.mark.parametrize(
    "plaintext",
    [
        f"host: [unclosed\npassword: {DB_PW}\n",
        f'password: "{DB_PW}\n',
        f"password: {DB_PW}\n\tport: 1\n",
        b"password: \xff\xfe" + DB_PW.encode() + b"\n",
    ],
    ids=["unclosed-flow", "unclosed-quote", "tab-indent", "not-utf8"],
)
def test_decrypted_content_not_yaml_is_config_error_without_the_password(
    tmp_path: Path, plaintext: str | bytes
) -> None:
    path = write_vault(tmp_path, plaintext)
    with pytest.raises(ConfigError, match="valid YAML") as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 78
    assert str(path) in str(info.value)
    assert_no_secrets(str(info.value))
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize(
    "plaintext",
    [f"- {DB_PW}\n- other\n", f"{DB_PW}\n", "42\n", "", "~\n"],
    ids=["list", "scalar", "number", "empty-document", "null"],
)
def test_decrypted_content_not_a_mapping_is_config_error(tmp_path: Path, plaintext: str) -> None:
    path = write_vault(tmp_path, plaintext)
    with pytest.raises(ConfigError, match="must be a YAML mapping") as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 78
    assert_no_secrets(str(info.value))


@pytest.mark.parametrize("key", ["host", "port", "dbname", "user", "password"])
def test_missing_required_key_is_named(tmp_path: Path, key: str) -> None:
    data = {k: v for k, v in BASE.items() if k != key}
    with pytest.raises(ConfigError, match=rf"lack required key\(s\): {key}$") as info:
        decrypt_credentials(write_vault(tmp_path, data), VAULT_PW)
    assert_no_secrets(str(info.value))


@pytest.mark.parametrize("value", [None, ""], ids=["null", "empty"])
def test_blank_required_value_counts_as_missing(tmp_path: Path, value: object) -> None:
    with pytest.raises(ConfigError, match=r"lack required key\(s\): password"):
        decrypt_credentials(write_vault(tmp_path, {**BASE, "password": value}), VAULT_PW)


def test_all_missing_keys_are_listed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lack required key\(s\): host, port, dbname, user$"):
        decrypt_credentials(write_vault(tmp_path, {"password": DB_PW}), VAULT_PW)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"port": "abc"}, "port must be an integer"),
        ({"port": True}, "port must be an integer"),
        ({"port": 5432.0}, "port must be an integer"),
        ({"port": "-1"}, "port must be an integer"),
        ({"port": 70000}, "port must be between 1 and 65535"),
        ({"port": 65536}, "port must be between 1 and 65535"),
        ({"port": 0}, "port must be between 1 and 65535"),
        ({"port": -5}, "port must be between 1 and 65535"),
        ({"host": 10}, "host must be a string"),
        ({"dbname": ["a"]}, "dbname must be a string"),
        ({"user": {"name": "x"}}, "user must be a string"),
        ({"password": 12345678}, "password must be a string"),
        ({"sslmode": "bogus"}, "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full"),
        ({"sslmode": "REQUIRE"}, "sslmode must be one of"),
        ({"sslrootcert": 5}, "sslrootcert must be a path"),
        ({"connect_timeout": 0}, "connect_timeout must be between 1 and 3600"),
        ({"connect_timeout": -3}, "connect_timeout must be between 1 and 3600"),
        ({"connect_timeout": "soon"}, "connect_timeout must be an integer"),
        ({"connect_timeout": False}, "connect_timeout must be an integer"),
        ({"options": "-c search_path=x"}, r"unknown key\(s\): options"),
        ({"passwd": DB_PW, "Host": "x"}, r"unknown key\(s\): Host, passwd"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_invalid_values_are_config_errors_without_the_password(
    tmp_path: Path, override: dict[str, object], expected: str
) -> None:
    path = write_vault(tmp_path, {**FULL, **override})
    with pytest.raises(ConfigError, match=expected) as info:
        decrypt_credentials(path, VAULT_PW)
    assert info.value.exit_code == 78
    message = str(info.value)
    assert str(path) in message
    assert_no_secrets(message)


def test_boundary_ports_are_accepted(tmp_path: Path) -> None:
    assert decrypt_credentials(write_vault(tmp_path, {**BASE, "port": 1}, name="a"), VAULT_PW).port == 1
    assert decrypt_credentials(write_vault(tmp_path, {**BASE, "port": 65535}, name="b"), VAULT_PW).port == 65535


def test_port_with_unicode_superscript_digit_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port must be an integer"):
        decrypt_credentials(write_vault(tmp_path, {**BASE, "port": "5²"}), VAULT_PW)


# --------------------------------------------------------------------------- DbCredentials


def test_repr_and_str_hide_the_password() -> None:
    creds = DbCredentials(host="h", port=1, dbname="d", user="u", password=DB_PW, sslmode="require")
    assert DB_PW not in repr(creds)
    assert DB_PW not in str(creds)
    assert DB_PW not in f"{creds!r} {creds}"
    assert "host='h'" in repr(creds)
    assert creds.connect_kwargs()["password"] == DB_PW


def test_connect_kwargs_keeps_zero_free_fields_out() -> None:
    creds = DbCredentials(host="h", port=1, dbname="d", user="u", password=DB_PW, sslmode="", sslrootcert="")
    assert "sslmode" not in creds.connect_kwargs()
    assert "sslrootcert" not in creds.connect_kwargs()


# --------------------------------------------------------------------------- read_password_file


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"s3cret\n", b"s3cret"),
        (b"s3cret\r\n", b"s3cret"),
        (b"s3cret", b"s3cret"),
        (b"  s3cret \t\n\n", b"s3cret"),
        (b"two words\n", b"two words"),
    ],
    ids=["lf", "crlf", "bare", "surrounding-whitespace", "inner-space-kept"],
)
def test_password_file_is_stripped_like_ansible(tmp_path: Path, raw: bytes, expected: bytes) -> None:
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.vault import FileVaultSecret

    path = tmp_path / "vault-pass"
    path.write_bytes(raw)
    path.chmod(0o600)
    assert read_password_file(str(path)) == expected
    ansible_secret = FileVaultSecret(filename=str(path), loader=DataLoader())
    ansible_secret.load()
    assert ansible_secret.bytes == expected


def test_password_file_from_ansible_style_opens_vault(tmp_path: Path) -> None:
    pw_file = tmp_path / "vault-pass"
    pw_file.write_bytes(VAULT_PW + b"\r\n")
    pw_file.chmod(0o600)
    password = read_password_file(str(pw_file))
    assert decrypt_credentials(write_vault(tmp_path, BASE), password).password == DB_PW


def test_dash_reads_from_given_stdin() -> None:
    assert read_password_file("-", io.BytesIO(b"from-stdin\n")) == b"from-stdin"


def test_dash_reads_binary_stdin_verbatim_apart_from_whitespace() -> None:
    assert read_password_file("-", io.BytesIO(b"\xc3\xa9t\xc3\xa9 pw\r\n")) == "été pw".encode()


def test_missing_password_file(tmp_path: Path) -> None:
    path = tmp_path / "no-such-file"
    with pytest.raises(MissingInputError) as info:
        read_password_file(str(path))
    assert info.value.exit_code == 66
    assert str(path) in str(info.value)


def test_password_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory") as info:
        read_password_file(str(tmp_path))
    assert info.value.exit_code == 78


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_password_file(tmp_path: Path) -> None:
    path = tmp_path / "vault-pass"
    path.write_bytes(b"pw")
    path.chmod(0)
    with pytest.raises(ConfigError, match="not readable"):
        read_password_file(str(path))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_group_or_other_accessible_password_file_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    caplog.set_level(logging.DEBUG, logger=credentials.__name__)
    path = tmp_path / "vault-pass"
    path.write_bytes(b"loose-perms-pw\n")
    path.chmod(mode)
    assert read_password_file(str(path)) == b"loose-perms-pw"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == credentials.__name__]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(path) in message
    assert f"{mode:o}" in message
    assert "chmod 600" in message
    assert "loose-perms-pw" not in caplog.text


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_password_file_does_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int) -> None:
    caplog.set_level(logging.DEBUG, logger=credentials.__name__)
    path = tmp_path / "vault-pass"
    path.write_bytes(b"private-pw\n")
    path.chmod(mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert read_password_file(str(path)) == b"private-pw"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --------------------------------------------------------------------------- resolve_vault_password


def _private_file(tmp_path: Path, content: bytes, name: str = "vault-pass") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(0o600)
    return str(path)


def test_explicit_file_wins_over_environment(tmp_path: Path) -> None:
    assert resolve_vault_password(_private_file(tmp_path, b"from-file\n"), b"from-env") == b"from-file"


def test_environment_password_used_without_file() -> None:
    assert resolve_vault_password(None, b"from-env") == b"from-env"
    assert resolve_vault_password("", b"from-env") == b"from-env"


def test_dash_uses_given_stdin() -> None:
    assert resolve_vault_password("-", b"from-env", io.BytesIO(b"from-stdin\n")) == b"from-stdin"


def test_no_password_source_is_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_vault_password(None, None)
    assert info.value.exit_code == 78
    assert "--vault-password-file" in str(info.value)
    assert "ANSIBLE_VAULT_PASSWORD" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\n", b"  \r\n\t "], ids=["empty", "newline", "whitespace"])
def test_empty_password_file_is_authentication_error(tmp_path: Path, content: bytes) -> None:
    path = _private_file(tmp_path, content)
    with pytest.raises(AuthenticationError, match="is empty") as info:
        resolve_vault_password(path, b"env-would-work")
    assert info.value.exit_code == 77
    assert path in str(info.value)


def test_empty_stdin_password_is_authentication_error() -> None:
    with pytest.raises(AuthenticationError, match="from stdin is empty"):
        resolve_vault_password("-", None, io.BytesIO(b"\n"))


def test_empty_environment_password_is_authentication_error() -> None:
    with pytest.raises(AuthenticationError, match="from ANSIBLE_VAULT_PASSWORD is empty"):
        resolve_vault_password(None, b"")


def test_missing_explicit_file_does_not_fall_back_to_environment(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError):
        resolve_vault_password(str(tmp_path / "absent"), b"from-env")


def test_resolved_password_is_registered_for_redaction(tmp_path: Path) -> None:
    resolve_vault_password(_private_file(tmp_path, VAULT_PW + b"\n"), None)
    assert redaction.scrub(f"pw={VAULT_PW.decode()}") == "pw=[REDACTED]"


# --------------------------------------------------------------------------- take_password_from_environment


@pytest.mark.parametrize(("value", "expected"), [("x\n", b"x"), ("x\r\n", b"x"), ("pass word", b"pass word")])
def test_take_password_removes_it_from_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: bytes
) -> None:
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD", value)
    assert take_password_from_environment() == expected
    assert "ANSIBLE_VAULT_PASSWORD" not in os.environ
    assert b"ANSIBLE_VAULT_PASSWORD" not in os.environb
    assert os.getenv("ANSIBLE_VAULT_PASSWORD") is None


def test_child_process_does_not_inherit_taken_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD", "child-must-not-see\n")
    assert take_password_from_environment() == b"child-must-not-see"
    result = subprocess.run(
        [sys.executable, "-c", "import os;print(os.environ.get('ANSIBLE_VAULT_PASSWORD'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert result.stdout.strip() == "None"


def test_take_password_when_unset_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD", raising=False)
    assert take_password_from_environment() is None
    assert take_password_from_environment() is None


def test_take_password_twice_returns_none_the_second_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD", "once")
    assert take_password_from_environment() == b"once"
    assert take_password_from_environment() is None


def test_empty_environment_password_is_taken_and_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD", "\n")
    taken = take_password_from_environment()
    assert taken == b""
    assert "ANSIBLE_VAULT_PASSWORD" not in os.environ
    with pytest.raises(AuthenticationError):
        resolve_vault_password(None, taken)
