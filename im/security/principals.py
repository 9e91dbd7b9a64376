"""Who is acting: the CLI acts as ``$IM_USER``, else the login name (SPEC §9)."""

from __future__ import annotations

import getpass
import os


def current_principal() -> str:
    explicit = os.environ.get("IM_USER", "").strip()
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid-{os.getuid()}"
