"""The highlighted conflict in full: what, where and since when, then the platform's and the
integration's value side by side, each with its time and actor. Values are shown whole
(wrapped), never cut."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from im.model import printable

LABEL = "bold"


def _pairs(*pairs: tuple[str, str]) -> Text:
    """``label value`` pairs on one line, labels in bold (still readable without it)."""
    text = Text()
    for i, (label, value) in enumerate(pairs):
        text.append("  " if i else "")
        text.append(f"{label} ", LABEL)
        text.append(value)
    return text


def _side(value: str, at: str, actor: str) -> Table:
    """Its time and actor, then the value (wrapped under itself, never cut): a long value
    must not push who and when out of view."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style=LABEL, no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("at", Text(at))
    grid.add_row("by", Text(printable(actor or "?")))
    grid.add_row("value", Text(printable(value, lines=True) or "(empty)"))
    return grid


class ConflictDetail(VerticalScroll):
    """Shows one conflict (``show``), or says why there is none."""

    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        with Horizontal(id="sides"):
            yield Static(id="platform", classes="side")
            yield Static(id="external", classes="side")

    def show(self, conflict: Mapping[str, Any] | None, empty: str = "") -> None:
        """Show ``conflict``, or ``empty`` (why nothing is shown) when it is None."""
        summary = self.query_one("#summary", Static)
        sides = self.query_one("#sides", Horizontal)
        sides.display = conflict is not None
        if conflict is None:
            summary.update(Text(empty))
            return
        head = Text(str(conflict["id"]), LABEL)
        head.append("  ")
        head.append_text(
            _pairs(
                ("incident", conflict["incident"]),
                ("field", conflict["field"]),
                ("detected", conflict["detected_at"]),
            )
        )
        more = _pairs(
            ("integration", conflict["integration"]),
            ("strategy", conflict["strategy"]),
            ("status", conflict["status"]),
        )
        summary.update(Text("\n").join([head, more]))
        platform = self.query_one("#platform", Static)
        external = self.query_one("#external", Static)
        platform.border_title = Text("platform (p)")
        external.border_title = Text(f"external: {conflict['integration']} (e)")
        platform.update(
            _side(conflict["platform_value"], conflict["platform_at"], conflict["platform_actor"])
        )
        external.update(
            _side(conflict["external_value"], conflict["external_at"], conflict["external_actor"])
        )
