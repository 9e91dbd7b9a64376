"""The confirmation asked before a conflict is resolved: what will happen, yes or no."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from im.sync import conflicts
from im.tui.conflict_table import clip

QUOTED = 180  # cells of a value quoted in the question


def question(conflict: Mapping[str, Any], choice: str) -> Text:
    """What resolving ``conflict`` with ``choice`` does, in words."""
    where = f"{conflict['incident']} {conflict['field']}"
    integration = conflict["integration"]
    # one line each, cut short: the detail pane shows them whole, and the question (with its
    # keys) must fit the screen whatever the values' length
    platform = clip(conflict["platform_value"], QUOTED)
    external = clip(conflict["external_value"], QUOTED)
    text = Text()
    if choice == conflicts.PLATFORM:
        text.append("Use the platform value\n", "bold")
        text.append(f"  {platform}\n")
        text.append(f"for {where}: it is sent to {integration}.")
    elif choice == conflicts.EXTERNAL:
        text.append(f"Use the value from {integration}\n", "bold")
        text.append(f"  {external}\n")
        text.append(f"for {where}: the platform takes it and passes it on.")
    else:
        text.append("Ignore: keep both values\n", "bold")
        text.append(f"  platform: {platform}\n  {integration}: {external}\n")
        text.append(f"for {where}, as an accepted divergence.")
    return text


class ConfirmScreen(ModalScreen[bool]):
    """Dismissed with True (y, Enter) or False (n, Escape)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("enter", "answer(True)", "Yes", show=False),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]

    def __init__(self, conflict: Mapping[str, Any], choice: str) -> None:
        super().__init__()
        self.conflict = conflict
        self.choice = choice

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as dialog:
            dialog.border_title = Text(f"Resolve {self.conflict['id']}?")
            yield Static(question(self.conflict, self.choice), id="question")
            yield Static(Text("y / Enter: yes    n / Escape: no"), id="answer-keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
