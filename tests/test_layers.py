"""Imports only point down: the core (everything below the front ends cli, daemon, tui, sim, api)
never imports click, rich, textual, the web framework or APScheduler, nor a front end."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "im"
FRONT_ENDS = ("cli", "daemon", "tui", "sim", "api")
FRONT_END_LIBRARIES = {
    "click",
    "rich",
    "textual",
    "fastapi",
    "pydantic",
    "starlette",
    "uvicorn",
    "apscheduler",
}
CORE_FILES = sorted(
    p
    for p in PACKAGE.rglob("*.py")
    if p.relative_to(PACKAGE).parts[0] not in FRONT_ENDS and p.name != "__main__.py"
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_modules_import_no_front_end(path: Path) -> None:
    bad = {
        name
        for name in _imports(path)
        if name.split(".")[0] in FRONT_END_LIBRARIES
        or (name.startswith("im.") and name.split(".")[1] in FRONT_ENDS)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_importing_the_core_loads_no_heavy_library() -> None:
    modules = [
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for p in CORE_FILES
    ]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + (
            f"print(','.join(sorted(m for m in {sorted(FRONT_END_LIBRARIES - {'click'})!r} "
            "if m in sys.modules)))"
        )
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_loads_no_database_crypto_or_rendering_library() -> None:
    """`im --help` stays fast: the command tree is built without the heavy libraries, which
    the commands import when they run."""
    code = (
        "import sys; from im.cli import cli; "
        "print(sorted(m for m in ('rich', 'sqlite_utils', 'cryptography', 'keyring', 'httpx', 'jwt', 'starlette', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
