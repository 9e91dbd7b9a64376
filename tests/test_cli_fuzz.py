"""Hostile command lines (SPEC §10, §14 "Bad input"): real command paths from the click tree
with generated arguments and option values (real ids and names, control characters, huge
strings, lone surrogates as a non-UTF-8 argv decodes to, negative and huge numbers, unknown
options, paths to directories, /dev/null, empty, binary or missing files), sometimes with
``--db`` pointing at an odd file, run through the real CLI and its error funnel against a
database with integrations, linked incidents and a conflict.

Every run exits 0, 1, 2 or 3; a failure is one line on stderr (``error: ...``, the last
line; notes and warnings may come before it), never a traceback nor "internal error"; and a
usage error (2) writes nothing to the database but the audit log's record of the attempt.

Not run: the commands that serve until stopped (``daemon``, ``sim``) or run the whole demo.
FIFOs are given to ``--db`` only: reading a secret or a policy from a FIFO waits for its
writer, as it should (``--webhook-secret-file <(pass show x)`` is such a pipe).

A longer campaign: ``IM_FUZZ_EXAMPLES=3000 python -m pytest -q tests/test_cli_fuzz.py``
(see tests/fuzzing.py).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from im.cli import cli
from tests.conftest import Im
from tests.fuzzing import fuzz_settings, home_env, shared_two
from tests.two_way import Two, new_incident

SKIPPED = {("daemon",), ("demo",), ("sim",)}
# reports that exit 1 when a check or case fails, having printed what failed on stdout
REPORTS = {("doctor",), ("integration", "test"), ("access", "policy", "test")}
# a failure the funnel did not know; a traceback
NEVER = ("internal error", "Traceback (most recent call last)")
EXIT_CODES = {0, 1, 2, 3}


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        here = (*path, name)
        if here in SKIPPED:
            continue
        if isinstance(command, click.Group):
            yield from _commands(command, here)
        else:
            yield here


COMMANDS = list(_commands(cli))


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


@dataclass
class World:
    two: Two
    odd: dict[str, str]  # odd paths by what they are


def _odd_paths(home: Path) -> dict[str, str]:
    odd = home / "odd"
    odd.mkdir()
    (odd / "empty").touch()
    (odd / "binary").write_bytes(bytes(range(256)) * 4)
    (odd / "not-a-db").write_text("SQLite format 3\x00 but not really\n")
    (odd / "huge-line").write_text("x" * 200_000)
    os.mkfifo(odd / "fifo")
    return {
        "directory": str(odd),
        "empty": str(odd / "empty"),
        "binary": str(odd / "binary"),
        "not-a-db": str(odd / "not-a-db"),
        "huge-line": str(odd / "huge-line"),
        "missing": str(odd / "missing" / "im.db"),
        "long": str(odd / ("x" * 5000)),
        "null": os.devnull,
        "fifo": str(odd / "fifo"),
        "relative": "im.db",  # in the sandbox the commands run in
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("cli-fuzz")
    with shared_two(home) as two:
        for title in ("Checkout API 5xx", "Login latency"):
            new_incident(two, "--title", title)
        two.im.ok("incident", "comment", "INC-1", "looking into it")
        two.sync()
        yield World(two, _odd_paths(home))


@pytest.fixture
def shared(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    home = world.two.im.db_path.parent
    home_env(monkeypatch, home)
    monkeypatch.delenv("IM_DEBUG", raising=False)
    # relative paths (a --db "x" that `init` would make) land in a sandbox, not the repo
    sandbox = home / "sandbox"
    sandbox.mkdir(exist_ok=True)
    monkeypatch.chdir(sandbox)
    return world


# -- values ------------------------------------------------------------------------------------

HOSTILE = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30),
    st.sampled_from(
        ["", " ", "-", "--", "-1", "-0", "0", "1e999", "nan", "9" * 400, "\n", "a\nb", "\t",
         "\x1b[31mred", "\x07", "\r\n", "\u202eevil", "\udcff\udcfe", "x" * 100_000, "%s%n",
         "{0}", "${IM_DB}", "$(id)", "'; DROP TABLE incidents; --", "../../etc/passwd",
         "[bold]markup[/]", "INC-1", "INC-0", "INC-99999999999999999999", "conflict-1",
         "entry-1", "prod-snow", "1", "alice", "*", "null", "true", "--help"]
    ),
)  # fmt: skip
# what a positional argument names, by its parameter's name: real ones half of the time
REAL = {
    "name": ["prod-snow", "prod-jira", "prod-pd", "1"],
    "incident_id": ["INC-1", "INC-2", "1"],
    "conflict_id": ["conflict-1", "1"],
    "entry": ["entry-1", "1"],
    "field": ["title", "severity", "status", "short_description", "summary"],
    "external_field": ["short_description", "urgency", "summary"],
    "principal": ["alice", "bob", "victor"],
    "token_ref": ["ci", "1"],
    "action": ["incident.create", "integration.configure", "conflict.resolve"],
    "text": ["a note"],
}


def _value(draw: st.DrawFn, param: click.Parameter, odd: dict[str, str]) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        return draw(st.sampled_from([str(c) for c in kind.choices]) | HOSTILE)
    if isinstance(kind, click.types.IntParamType):
        numbers = st.integers(-(10**30), 10**30) | st.integers(-3, 3)
        return draw(numbers.map(str) | HOSTILE)
    if isinstance(kind, click.types.FloatParamType):
        return draw(st.floats().map(str) | HOSTILE)
    if isinstance(kind, click.Path) or (param.name or "").endswith("_file"):
        return draw(st.sampled_from([p for k, p in odd.items() if k != "fifo"]) | HOSTILE)
    real = REAL.get(param.name or "")
    if real and draw(st.booleans()):
        return draw(st.sampled_from(real))
    return draw(HOSTILE)


@st.composite
def command_lines(draw: st.DrawFn, odd: dict[str, str]) -> tuple[tuple[str, ...], list[str]]:
    path = draw(st.sampled_from(COMMANDS))
    command = _command(path)
    argv: list[str] = []
    if draw(st.integers(0, 9)) == 0:  # --db pointing at something odd
        argv += ["--db", draw(st.sampled_from(sorted(odd.values())) | HOSTILE)]
    argv += list(path)
    options = [p for p in command.params if isinstance(p, click.Option)]
    for option in draw(st.lists(st.sampled_from(options), max_size=4) if options else st.just([])):
        flag = draw(st.sampled_from(option.opts + option.secondary_opts))
        if option.is_flag or flag in option.secondary_opts:
            argv.append(flag)
        else:
            argv += [flag, _value(draw, option, odd)]
    for argument in [p for p in command.params if isinstance(p, click.Argument)]:
        # a required one is sometimes left out: a usage error
        if draw(st.integers(0, 14)) and (argument.required or draw(st.booleans())):
            argv.append(_value(draw, argument, odd))
    if draw(st.integers(0, 9)) == 0:  # something the command does not take
        argv.insert(draw(st.integers(0, len(argv))), draw(HOSTILE | st.just("--nope")))
    return path, argv


def fingerprint(im: Im) -> str:
    """Every row of every table but the audit log's (an attempt is recorded there, with its
    error) and SQLite's own count of its ids."""
    db = im.db()
    try:
        tables = [
            name
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT IN ('audit_log', 'sqlite_sequence') "
                "ORDER BY name"
            )
        ]
        rows = [db.execute(f"SELECT * FROM [{t}] ORDER BY rowid").fetchall() for t in tables]
    finally:
        db.close()
    return hashlib.sha256(repr(rows).encode("utf-8", "surrogatepass")).hexdigest()


@fuzz_settings(300)
@given(data=st.data())
def test_hostile_command_lines_get_one_clear_line_and_change_nothing_on_usage_errors(
    shared: World, data: st.DataObject
) -> None:
    im = shared.two.im
    path, argv = data.draw(command_lines(shared.odd), label="command, argv")
    before = fingerprint(im)
    result = im(*argv)
    shown = result.stdout + result.stderr
    assert result.exit_code in EXIT_CODES, (argv, result)
    assert not any(text in shown for text in NEVER), (argv, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    report = path in REPORTS and result.exit_code == 1 and result.stdout and not errors
    if result.exit_code != 0 and not report:
        lines = result.stderr.splitlines()
        assert result.stderr.endswith("\n") and lines, (argv, result.stderr)
        assert lines[-1].startswith("error: "), (argv, result.stderr)
        assert sum(line.startswith("error: ") for line in lines) == 1, (argv, result.stderr)
    if result.exit_code == 2:
        assert fingerprint(im) == before, (argv, result.stderr)


@pytest.mark.parametrize("odd", ["directory", "empty", "binary", "not-a-db", "missing", "long",
                                 "null", "fifo", "relative"])  # fmt: skip
def test_odd_database_paths_are_one_line_errors(shared: World, odd: str, tmp_path: Path) -> None:
    """``--db`` at what is not a database: a clear error, and nothing made there."""
    path = _odd_paths(tmp_path)[odd]
    existed = os.path.lexists(path)
    result = shared.two.im("--db", path, "incident", "list")
    assert result.exit_code in (1, 2), result
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not any(text in result.stderr for text in NEVER)
    assert os.path.lexists(path) == existed


@pytest.mark.parametrize(
    "argv",
    [
        ["integration", "get", "\udcff\udcfe"],
        ["incident", "create", "--title", "caf\udce9"],
        ["--db", "\udcff.db", "incident", "list"],
    ],
)
def test_arguments_that_are_not_utf_8_are_a_usage_error(shared: World, argv: list[str]) -> None:
    """Found by the fuzzer: bytes a UTF-8 locale cannot decode (Python keeps them as lone
    surrogates) reached a database query and ended as "internal error (UnicodeEncodeError)"."""
    before = fingerprint(shared.two.im)
    result = shared.two.im(*argv)
    assert result.exit_code == 2, result
    assert result.stderr.startswith("error: argument ") and result.stderr.count("\n") == 1
    assert "is not valid UTF-8 text" in result.stderr
    assert fingerprint(shared.two.im) == before
