"""Reading secrets from a person without leaking them (SPEC §3).

Order: ``--x-file PATH``; the flag value (works, but warns: it shows in `ps` and shell
history; ``-`` reads it from a hidden prompt or standard input); on create, the environment
variable ("taken from $VAR"); on create, a hidden prompt when a required one is still missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from im.cli.output import note, warn
from im.errors import UsageError

if TYPE_CHECKING:
    from im.config.integrations import SecretSpec


def _read_file(spec: SecretSpec, path: str) -> str:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"{spec.option}-file {path[:200]}: {reason}") from None
    value = text.rstrip("\r\n")
    if not value:
        raise UsageError(f"{spec.option}-file {path} is empty")
    return value


def _prompt(spec: SecretSpec) -> str:
    return prompt(spec.label)


def prompt(label: str) -> str:
    """A secret from a hidden prompt, or from standard input's first line without a
    terminal (``--x -`` in a pipe)."""
    if sys.stdin.isatty():
        return str(click.prompt(label.capitalize(), hide_input=True)).strip()
    return sys.stdin.readline().rstrip("\r\n")


def gather(
    kind: str, flags: dict[str, str | None], files: dict[str, str | None], creating: bool
) -> dict[str, str]:
    """Secret name -> value for the secrets the person gave. Raises UsageError."""
    from im.config.integrations import SECRETS

    specs = {s.name: s for s in SECRETS[kind]}
    for name in set(flags) | set(files):
        if (flags.get(name) or files.get(name)) and name not in specs:
            raise UsageError(f"--{name.replace('_', '-')} does not apply to {kind} integrations")
    secrets: dict[str, str] = {}
    for spec in specs.values():
        flag, path = flags.get(spec.name), files.get(spec.name)
        if flag is not None and path is not None:
            raise UsageError(f"give {spec.option} or {spec.option}-file, not both")
        if path is not None:
            secrets[spec.name] = _read_file(spec, path)
        elif flag == "-":
            secrets[spec.name] = _prompt(spec)
        elif flag is not None:
            warn(
                f"{spec.option} on the command line shows in `ps` and shell history; "
                f"prefer ${spec.env_var} or {spec.option}-file"
            )
            secrets[spec.name] = flag
        elif creating and os.environ.get(spec.env_var):
            secrets[spec.name] = os.environ[spec.env_var]
            note(f"{spec.label} taken from ${spec.env_var}")
        elif creating and spec.required:
            if not sys.stdin.isatty():
                raise UsageError(
                    f"{spec.option} is required for {kind} integrations",
                    f"set ${spec.env_var}, pass {spec.option}-file PATH, or run in a terminal",
                )
            secrets[spec.name] = _prompt(spec)
    for name, value in secrets.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"the {specs[name].label} is not valid UTF-8 text") from None
    return secrets
