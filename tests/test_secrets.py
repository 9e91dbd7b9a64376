"""Secrets at rest: the envelope, where the master key comes from, and what happens when it
is missing."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from im.errors import SecretError
from im.security import secrets
from im.security.secrets import MasterKey, find_key, new_database_key, seal, unseal

KEY = MasterKey(b"k" * 32, "env", "$IM_MASTER_KEY")


def test_sealed_value_opens_only_on_its_own_row() -> None:
    sealed = seal(KEY, "hunter2", "integration:1:password")
    assert b"hunter2" not in sealed
    assert unseal(KEY, sealed, "integration:1:password") == "hunter2"
    with pytest.raises(SecretError, match="does not open"):
        unseal(KEY, sealed, "integration:2:password")


def test_every_seal_uses_a_fresh_nonce() -> None:
    assert seal(KEY, "same", "o") != seal(KEY, "same", "o")


def test_a_wrong_key_does_not_open() -> None:
    other = MasterKey(b"x" * 32, "env", "$IM_MASTER_KEY")
    with pytest.raises(SecretError):
        unseal(other, seal(KEY, "v", "o"), "o")


def test_env_key_wins_and_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    monkeypatch.setenv("IM_MASTER_KEY", base64.b64encode(raw).decode())
    key = new_database_key()
    assert (key.source, key.key) == ("env", raw)
    assert not secrets.key_file_path().exists()
    monkeypatch.setenv("IM_MASTER_KEY", "too-short")
    with pytest.raises(SecretError, match="32-byte base64 key"):
        new_database_key()


def test_without_env_or_keyring_a_private_key_file_is_made_and_reused() -> None:
    first = new_database_key()
    assert first.source == "file"
    path = secrets.key_file_path()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert new_database_key().key == first.key


def test_a_key_file_readable_by_others_is_refused() -> None:
    new_database_key()
    path = secrets.key_file_path()
    path.chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        new_database_key()


def test_missing_key_names_the_recorded_source_and_id(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SecretError) as caught:
        find_key("/somewhere/master.key", "0123456789abcdef")
    assert "0123456789abcdef" in str(caught.value)
    assert "/somewhere/master.key" in str(caught.value)
    # A different key in the environment is reported by id, never by value.
    raw = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("IM_MASTER_KEY", raw)
    with pytest.raises(SecretError) as caught:
        find_key("env", "0123456789abcdef")
    assert raw not in str(caught.value)
    assert secrets.key_id(base64.b64decode(raw)) in str(caught.value)


def test_plaintext_and_fail_keyrings_count_as_no_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    assert secrets._usable_keyring() is None  # the fail backend (conftest)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    assert secrets._usable_keyring() is None


def test_key_repr_never_shows_the_key() -> None:
    assert "kkkk" not in repr(KEY)


def test_the_database_is_useless_without_the_key_file(tmp_path: Path, initialised: object) -> None:
    from tests.conftest import SECRETS, SNOW, Im

    im: Im = initialised  # type: ignore[assignment]
    im.ok("integration", "create", "prod-snow", *SNOW, env=SECRETS)
    secrets.key_file_path().rename(tmp_path / "moved.key")
    result = im(
        "integration", "configure", "prod-snow", "--password-file", str(_file(tmp_path, "new-pass"))
    )
    assert result.exit_code == 1
    assert "master key" in result.stderr and "is missing" in result.stderr
    assert "new-pass" not in result.stderr


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(text + "\n")
    return path
