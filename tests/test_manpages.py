"""The man pages in man/ are generated from the click tree, fresh, clean roff, and complete.

Refresh them with `python -m im.cli.manpage` (from the repository root).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from im.cli import cli, manpage
from im.errors import ExitCode

REPO = Path(__file__).parent.parent
MAN_DIR = REPO / "man"
REFRESH = "run `python -m im.cli.manpage` (from the repository root) to refresh man/"


def _tree(
    command: click.Command, name: str = "im", parent: click.Context | None = None
) -> Iterator[click.Context]:
    """Every visible command of the tree, walked here independently of the generator."""
    ctx = click.Context(command, info_name=name, parent=parent, **command.context_settings)
    yield ctx
    if isinstance(command, click.Group):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            assert sub is not None
            if not sub.hidden:
                yield from _tree(sub, sub_name, ctx)


def _roff(text: str) -> str:
    return text.replace("-", "\\-")


def _groff_warnings(page: Path) -> str:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed (apt-get install groff-base)")
    result = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z", str(page)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stderr + (f"exit status {result.returncode}" if result.returncode else "")


# (a) fresh -------------------------------------------------------------------------------


def test_committed_pages_are_fresh(tmp_path: Path) -> None:
    expected = manpage.write(tmp_path)
    committed = {p.name: p.read_text(encoding="utf-8") for p in MAN_DIR.glob("im*.1")}
    assert sorted(committed) == sorted(expected), f"man pages differ in name: {REFRESH}"
    stale = [name for name, text in expected.items() if committed[name] != text]
    assert not stale, f"stale man pages {stale}: {REFRESH}"


def test_module_entry_point_writes_man_dir_and_removes_stale_pages(tmp_path: Path) -> None:
    (tmp_path / "man").mkdir()
    (tmp_path / "man" / "im-removed-long-ago.1").write_text(".TH OLD 1\n")
    (tmp_path / "man" / "other.1").write_text(".TH OTHER 1\n")
    subprocess.run([sys.executable, "-m", "im.cli.manpage"], cwd=tmp_path, check=True)
    written = sorted(p.name for p in (tmp_path / "man").iterdir())
    assert written == sorted([*manpage.generate(), "other.1"])


def test_output_is_deterministic() -> None:
    assert manpage.generate() == manpage.generate()
    for text in manpage.generate().values():
        first = text.splitlines()[0]
        assert re.fullmatch(r'\.TH [A-Z-]+ 1 "" "im [^"]+" "im manual"', first), first


def test_pages_follow_the_tree(tmp_path: Path) -> None:
    @click.group()
    def root() -> None:
        """Root."""

    @root.group("new-group")
    def new_group() -> None:
        """A group added later."""

    @new_group.command("leaf")
    @click.option("--dry-run", is_flag=True, help="Do nothing.")
    def leaf(dry_run: bool) -> None:
        """A leaf."""

    @root.command(hidden=True)
    def secret() -> None:
        """Hidden."""

    (tmp_path / "im-gone.1").write_text(".TH GONE 1\n")
    pages = manpage.write(tmp_path, root=root)
    assert sorted(pages) == ["im-new-group.1", "im.1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["im-new-group.1", "im.1"]
    assert '.SS "im new\\-group leaf"' in pages["im-new-group.1"]
    assert "\\fB\\-\\-dry\\-run\\fR" in pages["im-new-group.1"]


# (b) clean roff --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(manpage.generate()))
def test_page_renders_without_groff_warnings(tmp_path: Path, name: str) -> None:
    page = tmp_path / name
    page.write_text(manpage.generate()[name], encoding="utf-8")
    assert _groff_warnings(page) == ""


def test_awkward_help_text_is_escaped(tmp_path: Path) -> None:
    awkward = (
        "Backslash \\n and C:\\path, 'quoted' and \"double\", caf\u00e9 \u2014 ok.\n\n"
        ".leading dot\n\n"
        "'leading apostrophe\n\n"
        "\b\n.verbatim line\n  \\fB not a font change\n"
    )

    @click.group(help=awkward)
    def root() -> None:
        pass

    @root.command()
    @click.option("--path", metavar="DIR\\X", default="-", show_default=True, help=".dot \\e")
    def run(path: str) -> None:
        """Reads `-` from stdin with --path -; see `im run --help`."""

    pages = manpage.write(tmp_path, root=root)
    for name in pages:
        assert _groff_warnings(tmp_path / name) == ""
    root_page = pages["im.1"]
    assert "\\&.leading dot" in root_page
    assert "\\&'leading apostrophe" in root_page
    assert "\\&.verbatim line" in root_page
    assert "\\efB not a font change" in root_page
    assert "caf\\[u00E9]" in root_page
    starts = (".leading", "'leading", ".verbatim", "\\fB not")
    assert not any(line.lstrip().startswith(starts) for line in root_page.splitlines())
    run_page = pages["im-run.1"]
    assert "\\fBim run \\-\\-help\\fR" in run_page
    assert "\\fB\\-\\-path\\fR \\fIDIR\\eX\\fR" in run_page


# (c) complete ----------------------------------------------------------------------------


def test_every_command_and_option_appears_in_its_page() -> None:
    pages = manpage.generate()
    missing: list[str] = []
    for ctx in _tree(cli):
        parts = ctx.command_path.split()
        page = pages.get("-".join(parts[:2]) + ".1", "")
        if not page:
            missing.append(f"{ctx.command_path}: no page {'-'.join(parts[:2])}.1")
            continue
        if len(parts) > 2 and f'.SS "{_roff(ctx.command_path)}"' not in page:
            missing.append(f"{ctx.command_path}: no section in {'-'.join(parts[:2])}.1")
        for param in ctx.command.get_params(ctx):
            if isinstance(param, click.Option) and not param.hidden:
                for flag in param.opts + param.secondary_opts:
                    if f"\\fB{_roff(flag)}\\fR" not in page:
                        missing.append(f"{ctx.command_path} {flag}")
    assert not missing, f"undocumented in man pages: {missing}; {REFRESH}"


def test_root_page_lists_commands_environment_and_exit_statuses() -> None:
    page = manpage.generate()["im.1"]
    for ctx in list(_tree(cli))[1:]:
        if len(ctx.command_path.split()) == 2:
            assert f"\\fB{_roff(ctx.command_path)}\\fR" in page
    for section in ("SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT"):
        assert f".SH {section}\n" in page
    assert ".SH EXIT STATUS\n" in page
    assert set(manpage.EXIT_STATUS) == set(ExitCode), "document every ExitCode in EXIT_STATUS"
    for code in ExitCode:
        assert f".TP\n\\fB{int(code)}\\fR\n" in page


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    documented = {name for name, _ in manpage.ENVIRONMENT}
    used: set[str] = set()
    for source in (REPO / "im").rglob("*.py"):
        used |= set(re.findall(r"\bIM_[A-Z][A-Z_]*\b", source.read_text(encoding="utf-8")))
    assert used <= documented, f"add {sorted(used - documented)} to ENVIRONMENT in manpage.py"
    page = manpage.generate()["im.1"]
    for name in documented:
        assert f".TP\n\\fB{name}\\fR\n" in page


# (d) documented --------------------------------------------------------------------------


def test_every_command_and_option_has_help_text() -> None:
    undocumented: list[str] = []
    for ctx in _tree(cli):
        if not (ctx.command.help or ctx.command.short_help or "").strip():
            undocumented.append(f"command `{ctx.command_path}`")
        for param in ctx.command.get_params(ctx):
            if (
                isinstance(param, click.Option)
                and not param.hidden
                and not (param.help or "").strip()
            ):
                undocumented.append(f"option {'/'.join(param.opts)} of `{ctx.command_path}`")
    assert not undocumented, "add help text to: " + ", ".join(undocumented)
