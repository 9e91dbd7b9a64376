"""Master key rotation: every stored secret re-sealed under a new key (SPEC §9, `im key rotate`).

The order keeps the database's key stored somewhere at every moment, whatever step a crash
interrupts:

1. the new key goes to the staging place beside the current one (keyring entry
   ``master-key-next`` or the 0600 file ``master.key.next``); a crash here leaves an unused
   staged key, which the next rotation replaces;
2. one write transaction re-seals every secret and records the new key id in meta; a crash
   before its commit changes nothing in the database;
3. the staged key becomes the usual one and the staged copy is removed; a crash before that
   leaves the database's key at the staging place, where ``find_key`` looks too.

A key from $IM_MASTER_KEY cannot be stored by im: the user brings the new one in
$IM_NEW_MASTER_KEY and sets it as $IM_MASTER_KEY afterwards.
"""

from __future__ import annotations

import sqlite3
from contextlib import suppress
from dataclasses import dataclass

from sqlite_utils import Database

from im.config.integrations import master_key, secret_owner
from im.errors import SecretError, StateError
from im.security.secrets import (
    NEW_ENV_VAR,
    MasterKey,
    discard_staged,
    promote_key,
    replacement,
    seal,
    stage_key,
    unseal,
)
from im.store import integrations as rows
from im.store import locks, meta, recorded_source
from im.store.db import write


@dataclass(frozen=True)
class Rotation:
    secrets: int  # how many secrets were re-sealed
    integrations: int  # how many integrations they belong to
    old_key_id: str
    new_key_id: str
    source: str  # env | keyring | file
    location: str  # where the new key is kept ($IM_NEW_MASTER_KEY for an env key)


def rotate(db: Database) -> Rotation:
    """Re-seal every stored secret under a new master key kept where the current one is.

    Writes the key store (keyring or key file) and the database. Raises SecretError (the
    current key is missing, a secret does not open with it, the new key cannot be stored or
    $IM_NEW_MASTER_KEY is unusable), InProgressError (another rotation is running),
    StateError, DatabaseBusyError.
    """
    current = master_key(db)
    if current.source == "env":
        # nothing to store, so nothing to stage or lock: the transaction is the whole change
        return _reseal(db, current, replacement(current), f"${NEW_ENV_VAR}")
    with locks.key_store():
        current = master_key(db)  # again: another rotation may have finished since
        if current.staged:
            # An earlier rotation committed but did not move its key: finish that first, or
            # staging the next key would overwrite the only copy of the database's key.
            promote_key(current)
        new = replacement(current)
        staged_at = stage_key(new)
        try:
            done = _reseal(db, current, new, new.location)
        except Exception:
            # Nothing is sealed with the new key: drop it. Should that fail too, the staged
            # key is harmless (the next rotation replaces it) and the first error is the news.
            with suppress(SecretError):
                discard_staged(new.source)
            raise
        try:
            promote_key(new)
        except SecretError as exc:
            raise SecretError(
                f"the secrets are re-encrypted with key {new.key_id}, kept in {staged_at}, but "
                f"moving it to {new.location} failed: {exc.message}",
                "im finds it where it is; run `im key rotate` again to finish the move",
            ) from None
        return done


def _reseal(db: Database, current: MasterKey, new: MasterKey, location: str) -> Rotation:
    """One transaction: every secret opened with ``current`` and sealed with ``new`` (same
    owner as associated data, other columns untouched), and the new key id in meta."""
    # The key file is replaced right after this commit, so the commit must survive a power
    # loss: with WAL and synchronous=NORMAL the last commits may roll back, which would leave
    # the database sealed with a key that no longer exists.
    db.execute("PRAGMA synchronous = FULL")
    try:
        with write(db):
            if meta.require(db, "key_id") != current.key_id:
                raise StateError(
                    "the master key changed while the rotation started",
                    "run `im key rotate` again",
                )
            sealed = rows.sealed_secrets(db)
            for integration_id, name, value in sealed:
                owner = secret_owner(integration_id, name)
                try:
                    plain = unseal(current, value, owner)
                except SecretError as exc:
                    raise SecretError(
                        f"{exc.message}: nothing was re-encrypted",
                        "`im doctor` names the secrets that do not open; enter them again with "
                        "`im integration configure`, then rotate",
                    ) from None
                rows.reseal_secret(db, integration_id, name, seal(new, plain, owner), new.key_id)
            meta.put(db, "key_source", recorded_source(new))
            meta.put(db, "key_id", new.key_id)
    finally:
        # as store.db.connect sets it; a failure here must not look like a failed re-seal
        # (the caller would drop the staged key of a committed database): FULL is only slower
        with suppress(sqlite3.Error):
            db.execute("PRAGMA synchronous = NORMAL")
    return Rotation(
        secrets=len(sealed),
        integrations=len({integration_id for integration_id, _, _ in sealed}),
        old_key_id=current.key_id,
        new_key_id=new.key_id,
        source=new.source,
        location=location,
    )
