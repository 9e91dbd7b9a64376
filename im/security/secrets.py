"""Secrets at rest: AES-256-GCM envelopes under one master key (SPEC §9).

The master key comes from ``$IM_MASTER_KEY`` (32 bytes, base64), else a usable OS keyring,
else a 0600 key file in the user config directory (never beside the database, so a copied
database is useless alone). The database records the source and the key id (a fingerprint,
not the key) it was sealed with, so a missing or wrong key is named, not guessed at.

Each value is sealed with a fresh 96-bit nonce and the owning row as associated data: a
ciphertext copied onto another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from im.errors import SecretError

ENV_VAR = "IM_MASTER_KEY"
KEYRING_SERVICE = "im"
KEYRING_USER = "master-key"
KEY_BYTES = 32
NONCE_BYTES = 12
MAKE_KEY = "python3 -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'"


@dataclass(frozen=True)
class MasterKey:
    key: bytes
    source: str  # "env" | "keyring" | "file"
    location: str  # where a person finds it: $IM_MASTER_KEY, the keyring entry, the file path

    @property
    def key_id(self) -> str:
        return key_id(self.key)

    def __repr__(self) -> str:  # never print the key itself
        return f"MasterKey(source={self.source!r}, key_id={self.key_id!r})"


def key_id(key: bytes) -> str:
    """A short fingerprint that identifies a key without revealing it."""
    return hashlib.sha256(b"im-master-key-id:" + key).hexdigest()[:16]


def key_file_path() -> Path:
    return Path(platformdirs.user_config_dir("im", appauthor=False)) / "master.key"


def _decode(text: str, where: str) -> bytes:
    cleaned = text.strip()
    try:
        key = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), altchars=b"-_", validate=False)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretError(
            f"{where} does not hold a 32-byte base64 key", f"make one with: {MAKE_KEY}"
        )
    return key


def _from_env() -> MasterKey | None:
    raw = os.environ.get(ENV_VAR)
    if not raw:
        return None
    return MasterKey(_decode(raw, f"${ENV_VAR}"), "env", f"${ENV_VAR}")


def _usable_keyring() -> object | None:
    """The OS keyring backend, or None when there is no real one.

    The fail and chainer backends mean "none", and a plaintext backend (keyrings.alt) only
    base64-encodes secrets into a file: neither protects anything (NOTES.md).
    """
    try:
        import keyring
        from keyring.backends import chainer, fail

        backend = keyring.get_keyring()
    except Exception:
        return None
    if isinstance(backend, fail.Keyring | chainer.ChainerBackend):
        return None
    kind = f"{type(backend).__module__}.{type(backend).__name__}".lower()
    if "plaintext" in kind or "keyrings.alt" in kind or "null" in kind:
        return None
    return backend


def _from_keyring(create: bool) -> MasterKey | None:
    backend = _usable_keyring()
    if backend is None:
        return None
    location = f"keyring {type(backend).__name__} ({KEYRING_SERVICE}/{KEYRING_USER})"
    try:
        stored = backend.get_password(KEYRING_SERVICE, KEYRING_USER)  # type: ignore[attr-defined]
        if stored is None:
            if not create:
                return None
            stored = base64.b64encode(os.urandom(KEY_BYTES)).decode()
            backend.set_password(KEYRING_SERVICE, KEYRING_USER, stored)  # type: ignore[attr-defined]
    except Exception:
        return None  # a locked or broken keyring is no keyring
    return MasterKey(_decode(stored, location), "keyring", location)


def _from_file(create: bool) -> MasterKey | None:
    path = key_file_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretError(
            f"the key file {path} is readable by others (mode {mode:o})", f"chmod 600 {path}"
        )
    try:
        text = path.read_text()
    except OSError as exc:
        raise SecretError(f"cannot read the key file {path}: {exc.strerror}") from None
    return MasterKey(_decode(text, f"the key file {path}"), "file", str(path))


def new_database_key() -> MasterKey:
    """The key a new database is sealed with: env, else keyring, else the key file (made if
    needed). Writes the keyring entry or key file when it does not exist yet."""
    for candidate in (_from_env(), _from_keyring(create=True)):
        if candidate is not None:
            return candidate
    key = _from_file(create=True)
    assert key is not None
    return key


def find_key(recorded_source: str, recorded_id: str) -> MasterKey:
    """The master key whose id the database recorded, from whichever source holds it.

    Raises SecretError naming the recorded source and id when none of them has it.
    """
    seen: list[str] = []
    for load in (_from_env, lambda: _from_keyring(False), lambda: _from_file(False)):
        candidate = load()
        if candidate is None:
            continue
        if candidate.key_id == recorded_id:
            return candidate
        seen.append(f"{candidate.location} has key {candidate.key_id}")
    found = "; ".join(seen) if seen else "no key was found in $IM_MASTER_KEY, keyring or key file"
    raise SecretError(
        f"the master key {recorded_id} (kept in: {recorded_source}) is missing: {found}",
        "make that key reachable (for cron, set IM_MASTER_KEY or keep the key file)",
    )


def seal(master: MasterKey, plaintext: str, owner: str) -> bytes:
    """Encrypt ``plaintext``; ``owner`` names the row it belongs to (associated data)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(master.key).encrypt(nonce, plaintext.encode(), owner.encode())


def unseal(master: MasterKey, sealed: bytes, owner: str) -> str:
    """Decrypt a sealed value. Raises SecretError when the key or the owner does not match."""
    try:
        return (
            AESGCM(master.key)
            .decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], owner.encode())
            .decode()
        )
    except (InvalidTag, ValueError):
        raise SecretError(f"the stored secret for {owner} does not open with this key") from None
