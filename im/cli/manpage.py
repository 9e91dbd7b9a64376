"""Man pages for the ``im`` command line, generated from its click command tree.

``im.1`` documents the root command: synopsis, description, global options, the top-level
commands, the environment variables and the exit statuses. Every top-level command or
group gets its own page, ``im-NAME.1``, that documents it and every subcommand beneath it,
nested groups included: usage line, help text and each option with its metavar or
choices, its default when shown, and its help. The set of pages follows the tree: a
command added to ``im.cli.cli`` gets its page without touching this module.

The output is deterministic (no date in ``.TH``), so the pages are committed in ``man/``
and ``tests/test_manpages.py`` fails when they are stale. Regenerate them with::

    python -m im.cli.manpage [OUTDIR]    # OUTDIR defaults to man/ in the current directory

which writes the pages and removes ``im*.1`` files in OUTDIR that no longer match a command.

click-man is not used: it writes one page per command rather than one per group with its
nested subcommands, stamps the current date, and does not escape roff in help text.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import click

from im import __version__
from im.cli import cli
from im.errors import ExitCode

PROG = "im"
MANUAL = "im manual"
SECTION = "1"

ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("IM_DB", "Database file when --db is not given (default: im.db in the user data directory)."),
    (
        "IM_MASTER_KEY",
        "Master key (32 bytes, base64) sealing stored secrets; "
        "else the OS keyring, else a key file in the user config directory.",
    ),
    (
        "IM_NEW_MASTER_KEY",
        "The key `im key rotate` re-encrypts to when the master key is in $IM_MASTER_KEY.",
    ),
    ("IM_USER", "The principal the command line acts as (default: the login name)."),
    ("IM_BUSY_TIMEOUT", "Seconds a write waits for a locked database before failing (default 5)."),
    (
        "IM_PASSWORD",
        "ServiceNow password used by `im integration create` when --password is absent.",
    ),
    (
        "IM_API_TOKEN",
        "Jira or PagerDuty API token used by `im integration create` when --api-token is absent.",
    ),
    (
        "IM_WEBHOOK_SECRET",
        "Inbound webhook secret used by `im integration create` when --webhook-secret is absent.",
    ),
    ("IM_DEBUG", "When set, an unexpected error prints its traceback instead of one line."),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "Send OpenTelemetry spans over OTLP/HTTP to this collector (none when unset).",
    ),
    ("OTEL_TRACES_EXPORTER", "otlp, console (spans on standard error) or none."),
    ("OTEL_SERVICE_NAME", "The service name spans carry (default: im)."),
)

EXIT_STATUS: dict[ExitCode, str] = {
    ExitCode.OK: "Success.",
    ExitCode.FAILURE: "Failure; the one-line message on standard error says what and why.",
    ExitCode.USAGE: "Usage error: an unknown command or option, or a bad or missing value.",
    ExitCode.IN_PROGRESS: "Another run of the same thing is in progress; retry when it finishes.",
    ExitCode.INTERRUPTED: "Interrupted (Ctrl-C) or aborted at a prompt.",
}

# A code-like word in prose: an option (--work-note, -h) or a lone "-" (standard input).
_CODE_WORD = re.compile(r"(?<![\w-])(?:--?[A-Za-z0-9][\w-]*|-(?![\w-]))")
_BACKTICKS = re.compile(r"`([^`\n]+)`")


# -- roff escaping ------------------------------------------------------------------------


def _chars(text: str) -> str:
    """Escape backslashes and spell non-ASCII characters as groff ``\\[uXXXX]``."""
    text = text.replace("\\", "\\e")
    return "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)


def code(text: str) -> str:
    """Roff for literal text (commands, options, usage): every hyphen is a ``\\-``."""
    return _chars(text).replace("-", "\\-")


def prose(text: str) -> str:
    """Roff for running text: options and lone dashes as ``\\-``, `backticks` in bold."""
    out: list[str] = []
    for i, part in enumerate(_BACKTICKS.split(text)):
        if i % 2:
            out.append(f"\\fB{code(part)}\\fR")
            continue
        pos = 0
        for match in _CODE_WORD.finditer(part):
            out.append(_chars(part[pos : match.start()]))
            out.append(code(match.group()))
            pos = match.end()
        out.append(_chars(part[pos:]))
    return "".join(out)


def _line(roff: str) -> str:
    """A text line that cannot be mistaken for a request (leading ``.`` or ``'``)."""
    return "\\&" + roff if roff.startswith((".", "'")) else roff


def _arg(text: str) -> str:
    """A quoted macro argument."""
    return '"' + code(text).replace('"', "\\(dq") + '"'


def _bold(text: str) -> str:
    return f"\\fB{code(text)}\\fR"


def _paragraphs(text: str, separator: str) -> list[str]:
    """Help text as roff: paragraphs split by ``separator``, click's ``\\b`` blocks kept."""
    lines: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        if lines:
            lines.append(separator)
        rows = block.splitlines()
        if rows and rows[0].strip() == "\b":
            lines.append(".nf")
            lines.extend(_line(prose(row)) for row in rows[1:])
            lines.append(".fi")
        else:
            lines.append(_line(prose(" ".join(block.split()))))
    return lines


# -- the click tree -----------------------------------------------------------------------


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    return click.Context(command, info_name=name, parent=parent, **command.context_settings)


def subcommands(ctx: click.Context) -> Iterator[click.Context]:
    """Contexts of the visible direct subcommands of ``ctx.command``, in click's order."""
    group = ctx.command
    if not isinstance(group, click.Group):
        return
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is not None and not command.hidden:
            yield _context(command, name, ctx)


def walk(ctx: click.Context) -> Iterator[click.Context]:
    """``ctx`` and then every visible command beneath it, depth first."""
    yield ctx
    for child in subcommands(ctx):
        yield from walk(child)


def help_text(command: click.Command) -> str:
    """The help of a command as ``--help`` shows it (before any ``\\f``), dedented."""
    return inspect.cleandoc((command.help or "").split("\f", 1)[0])


def summary(ctx: click.Context) -> str:
    """The first sentence of the help, without a leading "NAME: " and the final period."""
    text = ctx.command.get_short_help_str(limit=10_000)
    prefix = f"{ctx.info_name}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    return text.removesuffix(".")


def _is_help(option: click.Option, ctx: click.Context) -> bool:
    return bool(set(option.opts) & set(ctx.help_option_names)) and not option.expose_value


def _options(ctx: click.Context) -> list[click.Option]:
    return [
        p
        for p in ctx.command.get_params(ctx)
        if isinstance(p, click.Option) and not p.hidden and not _is_help(p, ctx)
    ]


def _usage(ctx: click.Context) -> str:
    pieces = " ".join(ctx.command.collect_usage_pieces(ctx))
    return _line(f"{_bold(ctx.command_path)} {code(pieces)}".rstrip())


def _option_tag(declaration: str) -> str:
    """``--format [a|b]`` as bold flags, italic metavars and plain choices."""
    words: list[str] = []
    for word in declaration.split():
        comma = "," if word.endswith(",") else ""
        word = word.removesuffix(",")
        if word.startswith("-"):
            words.append(_bold(word) + comma)
        elif word == "/" or word.startswith("["):
            words.append(code(word) + comma)
        else:
            words.append(f"\\fI{code(word)}\\fR{comma}")
    return _line(" ".join(words))


def _option_entries(ctx: click.Context) -> list[str]:
    lines: list[str] = []
    for option in _options(ctx):
        record = option.get_help_record(ctx)
        if record is None:
            continue
        declaration, text = record
        lines += [".TP", _option_tag(declaration), *_paragraphs(text, ".IP")]
    return lines


def _help_entry(ctx: click.Context, text: str) -> list[str]:
    names = ", ".join(_bold(name) for name in ctx.help_option_names)
    return [".TP", names, _line(prose(text))] if names else []


# -- pages --------------------------------------------------------------------------------


def _header(ctx: click.Context, version: str) -> list[str]:
    name = ctx.command_path.replace(" ", "-")
    return [
        f'.TH {name.upper()} {SECTION} "" {_arg(f"{PROG} {version}")} {_arg(MANUAL)}',
        ".SH NAME",
        f"{code(name)} \\- {prose(summary(ctx))}",
    ]


def page_name(ctx: click.Context) -> str:
    """``im.1`` for the root, ``im-NAME.1`` for a top-level command."""
    return ctx.command_path.replace(" ", "-") + "." + SECTION


def _see_also(names: Sequence[str]) -> list[str]:
    refs = [f"{_bold(name.removesuffix('.' + SECTION))}({SECTION})" for name in names]
    return [".SH SEE ALSO", ",\n".join(refs)] if refs else []


def root_page(ctx: click.Context, version: str) -> str:
    children = list(subcommands(ctx))
    lines = _header(ctx, version)
    lines += [
        ".SH SYNOPSIS",
        _usage(ctx),
        ".SH DESCRIPTION",
        *_paragraphs(help_text(ctx.command), ".PP"),
    ]
    lines += [".SH OPTIONS", *_option_entries(ctx)]
    lines += _help_entry(ctx, f"Show the help of {PROG}, or of the command it follows, and exit.")
    if children:
        lines.append(".SH COMMANDS")
        for child in children:
            lines += [".TP", _bold(child.command_path), _line(prose(summary(child) + "."))]
            lines.append(f"See {_bold(page_name(child).removesuffix('.' + SECTION))}({SECTION}).")
    lines += [".SH ENVIRONMENT"]
    for variable, text in ENVIRONMENT:
        lines += [".TP", _bold(variable), _line(prose(text))]
    lines += [".SH EXIT STATUS"]
    for status, text in sorted(EXIT_STATUS.items()):
        lines += [".TP", _bold(str(int(status))), _line(prose(text))]
    lines += _see_also([page_name(child) for child in children])
    return "\n".join(lines) + "\n"


def command_page(ctx: click.Context, version: str) -> str:
    lines = _header(ctx, version)
    descendants = list(walk(ctx))[1:]
    lines += [".SH SYNOPSIS", _usage(ctx)]
    for sub in descendants:
        if not isinstance(sub.command, click.Group):
            lines += [".br", _usage(sub)]
    lines += [".SH DESCRIPTION", *_paragraphs(help_text(ctx.command), ".PP")]
    lines += [".SH OPTIONS", *_option_entries(ctx)]
    lines += _help_entry(ctx, "Show the help of this command and exit.")
    if descendants:
        lines += [".SH COMMANDS"]
        names = ", ".join(_bold(name) for name in ctx.help_option_names)
        if names:
            lines.append(f"Every command below also accepts {names}.")
        for sub in descendants:
            lines += [f".SS {_arg(sub.command_path)}", _usage(sub), ".PP"]
            lines += _paragraphs(help_text(sub.command), ".PP")
            lines += _option_entries(sub)
    lines += _see_also([PROG + "." + SECTION])
    return "\n".join(lines) + "\n"


def generate(
    root: click.Command = cli, prog: str = PROG, version: str = __version__
) -> dict[str, str]:
    """Every page of the tree under ``root``: file name to roff text."""
    ctx = _context(root, prog, None)
    pages = {page_name(ctx): root_page(ctx, version)}
    for child in subcommands(ctx):
        pages[page_name(child)] = command_page(child, version)
    return pages


def write(outdir: Path, root: click.Command = cli, prog: str = PROG) -> dict[str, str]:
    """Write the pages into ``outdir`` and delete its stale ``im*.1`` files."""
    pages = generate(root, prog)
    outdir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(outdir.glob(f"{prog}*.{SECTION}")):
        if stale.name not in pages:
            stale.unlink()
    for name, text in pages.items():
        path = outdir / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8", newline="\n")
    return pages


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m im.cli.manpage [OUTDIR]  (default: man/)", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    outdir = Path(args[0] if args else "man")
    for name in write(outdir):
        print(outdir / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
