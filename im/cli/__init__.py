"""The ``im`` command line. Commands parse, call one library function, render.

Every error ends here as one line on stderr and an exit code (im.errors.ExitCode):
2 for usage, 1 for failures, 3 for "another run in progress"; never a traceback unless
IM_DEBUG=1 asks for one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from im import __version__
from im.cli.context import AppContext
from im.errors import ExitCode, ImError


def _one_line(text: str) -> str:
    return " ".join(text.split())


class ImGroup(click.Group):
    """The root group: routes every exception through one funnel."""

    def invoke(self, ctx: click.Context) -> Any:
        # The audit log learns how a command's mutations ended while the database is open.
        try:
            result = super().invoke(ctx)
        except BaseException as exc:
            _finish_quietly(ctx, _outcome(exc))
            raise
        failed = isinstance(result, int) and result != ExitCode.OK
        _finish_quietly(ctx, f"exit status {result}" if failed else None)
        return result

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code: int = ExitCode.OK
        try:
            _check_utf8(sys.argv[1:] if args is None else args)
            result = super().main(
                args, prog_name or "im", complete_var, standalone_mode=False, **extra
            )
            code = result if isinstance(result, int) else ExitCode.OK
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            code = ExitCode.INTERRUPTED
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "im"
            click.echo(f"error: {_one_line(exc.format_message())} (see `{where} --help`)", err=True)
            code = ExitCode.USAGE
        except click.ClickException as exc:
            click.echo(f"error: {_one_line(exc.format_message())}", err=True)
            code = exc.exit_code
        except ImError as exc:
            click.echo(f"error: {_one_line(str(exc))}", err=True)
            code = exc.exit_code
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            code = ExitCode.INTERRUPTED
        except OSError as exc:
            where = f": {str(exc.filename)[:200]}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or type(exc).__name__}{where}", err=True)
            code = ExitCode.FAILURE
        except sqlite3.Error as exc:
            click.echo(f"error: database error: {_one_line(str(exc))}", err=True)
            code = ExitCode.FAILURE
        except Exception as exc:
            if os.environ.get("IM_DEBUG"):
                raise
            # The message of an unexpected error is not shown: it could carry anything.
            click.echo(
                f"error: internal error ({type(exc).__name__}); "
                "rerun with IM_DEBUG=1 to see the traceback and please report it",
                err=True,
            )
            code = ExitCode.FAILURE
        if standalone_mode:
            sys.exit(int(code))
        return int(code)


def _check_utf8(args: Sequence[str]) -> None:
    """An argument that is not UTF-8 (bytes the locale could not decode) would fail deep
    down, where a database query or a request encodes it: refuse it first, as a usage error."""
    for number, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise click.UsageError(f"argument {number} is not valid UTF-8 text") from None


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, ImError):
        return _one_line(str(exc))
    if isinstance(exc, click.exceptions.Exit):
        return f"exit status {exc.exit_code}"
    if isinstance(exc, click.ClickException):
        return _one_line(exc.format_message())
    # an unexpected error's text could carry anything: only its type is recorded
    return f"interrupted ({type(exc).__name__})"


def _finish_quietly(ctx: click.Context, error: str | None) -> None:
    obj = ctx.find_object(AppContext)  # set by the root callback, inside invoke
    if obj is None:
        return
    # the command's own outcome is what the user must see; on failure the entry stays open
    with contextlib.suppress(ImError, sqlite3.Error):
        obj.finish(None if error == "exit status 0" else error)


@click.group(name="im", cls=ImGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Database file (default: $IM_DB, else im.db in the user data directory).",
)
@click.version_option(__version__, prog_name="im")
@click.pass_context
def cli(ctx: click.Context, db_path: Path | None) -> None:
    """im: incidents kept in sync with ServiceNow, Jira Service Management and PagerDuty.

    State lives in one SQLite database. Start with `im init`, add an integration with
    `im integration create`, then work incidents with `im incident ...`.
    """
    if ctx.obj is None:
        ctx.obj = AppContext()
    if db_path is not None:
        ctx.obj.db_path = db_path
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    from im.cli import (
        access,
        audit,
        conflict,
        daemon,
        demo,
        doctor,
        incident,
        init,
        integration,
        key,
        sim,
        token,
    )

    cli.add_command(init.init)
    cli.add_command(daemon.daemon)
    cli.add_command(demo.demo)
    cli.add_command(doctor.doctor)
    cli.add_command(incident.incident)
    cli.add_command(conflict.conflict)
    cli.add_command(integration.integration)
    cli.add_command(sim.sim)
    cli.add_command(token.token)
    cli.add_command(access.access)
    cli.add_command(audit.audit)
    cli.add_command(key.key)


_register()


def main() -> None:
    cli.main(prog_name="im")
