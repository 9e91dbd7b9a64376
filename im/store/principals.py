"""Role bindings: which principal holds which role, in which scope (SPEC §9).

Enforcement comes from the Rego policy; this module only stores the bindings.
"""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from im.model import Role


def grant(db: Database, principal: str, role: Role, scope: str, by: str, at: str) -> bool:
    """Bind ``role`` to ``principal``. Returns False when it was already bound. Writes."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO role_bindings (principal, role, scope, granted_by, granted_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [principal, role.value, scope, by, at],
    )
    return cursor.rowcount == 1


def bindings(db: Database) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT principal, role, scope, granted_by, granted_at FROM role_bindings "
            "ORDER BY principal, role, scope"
        )
    )


def bindings_of(db: Database, principal: str) -> list[dict[str, Any]]:
    """The role bindings of one principal: what the policy is given as input."""
    return list(
        db.query(
            "SELECT role, scope FROM role_bindings WHERE principal = ? ORDER BY role, scope",
            [principal],
        )
    )


def revoke(db: Database, principal: str, role: Role, scope: str) -> bool:
    """Remove one binding. False when there was none. Writes."""
    cursor = db.execute(
        "DELETE FROM role_bindings WHERE principal = ? AND role = ? AND scope = ?",
        [principal, role.value, scope],
    )
    return cursor.rowcount == 1


def administrators(db: Database) -> list[str]:
    return [
        r["principal"]
        for r in db.query(
            "SELECT DISTINCT principal FROM role_bindings WHERE role = ? ORDER BY principal",
            [Role.ADMINISTRATOR.value],
        )
    ]
