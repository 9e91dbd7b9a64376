"""Who is acting: the CLI acts as ``$IM_USER``, else the login name (SPEC §9)."""

from __future__ import annotations

import getpass
import os

from im.errors import UsageError
from im.security.rbac import check_term


def check_principal(name: str, what: str = "the principal") -> str:
    """``name`` if it can be a principal (letters, digits, . _ @ + -). Raises UsageError."""
    return check_term(what, name.strip())


def current_principal() -> str:
    explicit = os.environ.get("IM_USER", "").strip()
    if explicit:
        return check_principal(explicit, "$IM_USER")
    try:
        login = getpass.getuser()
    except (OSError, KeyError):
        login = ""
    try:
        return check_principal(login)
    except UsageError:
        return f"uid-{os.getuid()}"
