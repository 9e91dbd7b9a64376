"""Secrets at rest: AES-256-GCM envelopes under one master key (SPEC §9).

The master key comes from ``$IM_MASTER_KEY`` (32 bytes, base64), else a usable OS keyring,
else a 0600 key file in the user config directory (never beside the database, so a copied
database is useless alone). The database records the source and the key id (a fingerprint,
not the key) it was sealed with, so a missing or wrong key is named, not guessed at.

Each value is sealed with a fresh 96-bit nonce and the owning row as associated data: a
ciphertext copied onto another row does not open.

A rotation (``im key rotate``) first stores the new key at a staging place beside the current
one (keyring entry ``master-key-next``, file ``master.key.next``), then commits the database
re-sealed with it, then moves it to the usual place. ``find_key`` looks at the staging place
too, so a crash at any step leaves the database's key reachable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from im.errors import SecretError

ENV_VAR = "IM_MASTER_KEY"
KEYRING_SERVICE = "im"
KEYRING_USER = "master-key"
KEYRING_STAGING_USER = "master-key-next"
NEW_ENV_VAR = "IM_NEW_MASTER_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12
MAKE_KEY = "python3 -c 'import os,base64;print(base64.b64encode(os.urandom(32)).decode())'"


@dataclass(frozen=True)
class MasterKey:
    key: bytes
    source: str  # "env" | "keyring" | "file"
    location: str  # where a person finds it: $IM_MASTER_KEY, the keyring entry, the file path
    staged: bool = False  # found at the staging place: a rotation did not finish moving it

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


def staging_file_path() -> Path:
    """Where a rotation keeps the new key file until the database is sealed with it."""
    return key_file_path().with_name("master.key.next")


def key_lock_path() -> Path:
    """The lock held while the key is made or rotated: the key store is per user, shared by
    every database."""
    return key_file_path().with_name("master.key.lock")


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


def _keyring_location(backend: object, user: str) -> str:
    return f"keyring {type(backend).__name__} ({KEYRING_SERVICE}/{user})"


def _from_keyring(create: bool, user: str = KEYRING_USER) -> MasterKey | None:
    backend = _usable_keyring()
    if backend is None:
        return None
    location = _keyring_location(backend, user)
    try:
        stored = backend.get_password(KEYRING_SERVICE, user)  # type: ignore[attr-defined]
        if stored is None:
            if not create:
                return None
            stored = base64.b64encode(os.urandom(KEY_BYTES)).decode()
            backend.set_password(KEYRING_SERVICE, KEYRING_USER, stored)  # type: ignore[attr-defined]
    except Exception:
        return None  # a locked or broken keyring is no keyring
    return MasterKey(_decode(stored, location), "keyring", location, user != KEYRING_USER)


def _from_file(create: bool, path: Path | None = None) -> MasterKey | None:
    staged = path is not None
    path = path or key_file_path()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n")
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None  # a rotation removed its staging file between our two looks
    if mode & 0o077:
        raise SecretError(
            f"the key file {path} is readable by others (mode {mode:o})", f"chmod 600 {path}"
        )
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretError(f"cannot read the key file {path}: {exc.strerror}") from None
    return MasterKey(_decode(text, f"the key file {path}"), "file", str(path), staged)


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
    # Each staging place before its usual one: a rotation writes the usual place and only
    # then removes the staged copy, so looking in this order never misses a key in motion.
    for load in (
        _from_env,
        lambda: _from_keyring(False, KEYRING_STAGING_USER),
        lambda: _from_keyring(False),
        lambda: _from_file(False, staging_file_path()),
        lambda: _from_file(False),
    ):
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


def replacement(current: MasterKey) -> MasterKey:
    """The key to rotate ``current`` to, meant for the same place. Writes nothing.

    im cannot change the environment of the processes that need a key from $IM_MASTER_KEY,
    so that key's successor is one the user made, in $IM_NEW_MASTER_KEY. Raises SecretError
    when it is missing, malformed or the current key.
    """
    if current.source != "env":
        return MasterKey(os.urandom(KEY_BYTES), current.source, _place(current.source, False))
    raw = os.environ.get(NEW_ENV_VAR)
    if not raw:
        raise SecretError(
            f"the master key comes from ${ENV_VAR}, which im cannot change: put a new key in "
            f"${NEW_ENV_VAR} and run this again",
            f"make one with: {MAKE_KEY}",
        )
    key = _decode(raw, f"${NEW_ENV_VAR}")
    if key == current.key:
        raise SecretError(
            f"${NEW_ENV_VAR} holds the current master key", f"make a new one with: {MAKE_KEY}"
        )
    return MasterKey(key, "env", f"${ENV_VAR}")


def stage_key(key: MasterKey) -> str:
    """Store ``key`` at the staging place of its source (keyring entry or 0600 file), replacing
    whatever an interrupted rotation left there, and return that place. Writes the keyring or
    the file. Raises SecretError."""
    _store(key, staged=True)
    return _place(key.source, True)


def promote_key(key: MasterKey) -> None:
    """Make ``key`` the usual key of its source, then drop the staged copy: in that order, so
    that ``find_key`` (staging first) always finds it. Writes. Raises SecretError."""
    _store(key, staged=False)
    discard_staged(key.source)


def _place(source: str, staged: bool) -> str:
    if source == "file":
        return str(staging_file_path() if staged else key_file_path())
    return _keyring_location(_keyring(), KEYRING_STAGING_USER if staged else KEYRING_USER)


def _keyring() -> Any:
    backend = _usable_keyring()
    if backend is None:
        raise SecretError(
            "the OS keyring that holds the master key is not available",
            "unlock it, then run this again",
        )
    return backend


def _store(key: MasterKey, staged: bool) -> None:
    if key.source == "file":
        _write_key_file(staging_file_path() if staged else key_file_path(), key.key)
        return
    if key.source != "keyring":
        raise SecretError(f"im cannot store a key in {key.location}")
    backend = _keyring()
    user = KEYRING_STAGING_USER if staged else KEYRING_USER
    try:
        backend.set_password(KEYRING_SERVICE, user, base64.b64encode(key.key).decode())
    except Exception as exc:  # the backend's message is not ours to show: it may quote values
        where = _keyring_location(backend, user)
        raise SecretError(
            f"cannot store the master key in {where} ({type(exc).__name__})"
        ) from None


def discard_staged(source: str) -> None:
    """Remove the staged key of ``source`` ("keyring" or "file"), if any. Writes. Raises
    SecretError."""
    if source == "file":
        path = staging_file_path()
        try:
            path.unlink(missing_ok=True)
            _sync_directory(path.parent)
        except OSError as exc:
            raise SecretError(f"cannot remove the key file {path}: {exc.strerror}") from None
        return
    from keyring.errors import PasswordDeleteError

    backend = _keyring()
    try:
        backend.delete_password(KEYRING_SERVICE, KEYRING_STAGING_USER)
    except PasswordDeleteError:
        pass  # nothing was staged
    except Exception as exc:
        where = _keyring_location(backend, KEYRING_STAGING_USER)
        raise SecretError(f"cannot remove {where} ({type(exc).__name__})") from None


def _write_key_file(path: Path, key: bytes) -> None:
    """Replace ``path`` by a 0600 file holding ``key``, whole or not at all: neither a reader
    nor a crash ever meets a half-written key. Raises SecretError."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary.unlink(missing_ok=True)  # left by a crash while writing; never read
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(key).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _sync_directory(path.parent)  # the rename itself must survive a power loss
    except OSError as exc:
        raise SecretError(f"cannot write the key file {path}: {exc.strerror}") from None


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
