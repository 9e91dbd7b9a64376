"""Rendering for every command: one ``--format`` option, tables for people, JSON / JSONL /
CSV for programs. Stdout is data; warnings and notes go to stderr."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import click

from im.model import printable

FORMATS = ("table", "json", "jsonl", "csv")
F = TypeVar("F", bound=Callable[..., Any])


def format_option(func: F) -> F:
    """``--format table|json|jsonl|csv`` (default table)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format.",
    )(func)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def note(message: str) -> None:
    click.echo(message, err=True)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping | list):
        return json.dumps(value, sort_keys=True)
    # one line, and nothing a terminal would act on (values come from external systems too)
    return printable(" ".join(str(value).splitlines()))


def _is_terminal() -> bool:
    return sys.stdout.isatty()


def emit_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str) -> None:
    """Print a list: a table, a JSON array, JSON lines or CSV with ``columns`` in order."""
    if fmt == "json":
        click.echo(json.dumps([_pick(r, columns) for r in rows], indent=2))
    elif fmt == "jsonl":
        for row in rows:
            click.echo(json.dumps(_pick(row, columns)))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(r.get(c)) for c in columns] for r in rows)
        click.echo(buffer.getvalue(), nl=False)
    else:
        click.echo(table(rows, columns), nl=False)


def _pick(row: Mapping[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    return {c: row.get(c) for c in columns}


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A table: rich on a terminal, plain aligned text (stable, greppable) otherwise."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    if _is_terminal():
        from rich import box
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        rich_table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in columns:
            rich_table.add_column(column, overflow="fold")
        for line in cells:
            rich_table.add_row(*(Text(cell) for cell in line))  # data is never markup
        console = Console(file=io.StringIO(), force_terminal=True, width=_width())
        console.print(rich_table)
        return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    return "\n".join(lines) + "\n"


def _width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def emit_object(obj: Mapping[str, Any], fmt: str) -> None:
    """Print one object: ``key: value`` lines for people, one JSON object for programs."""
    if fmt in ("json", "jsonl"):
        click.echo(json.dumps(obj, indent=2 if fmt == "json" else None))
    elif fmt == "csv":
        emit_rows([_flatten(obj)], list(_flatten(obj)), "csv")
    else:
        flat = _flatten(obj)
        width = max((len(k) for k in flat), default=0)
        for key, value in flat.items():
            click.echo(f"{key.ljust(width)}  {_cell(value)}".rstrip())


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
