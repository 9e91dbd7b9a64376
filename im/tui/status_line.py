"""One line saying what the last action did. The kind is in the words and a sign (✓ ✗ ·),
not only in the colour."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

SIGNS = {"ok": "✓", "error": "✗", "info": "·"}


class StatusLine(Static):
    """``say`` replaces the message; ``message`` is the text shown (tests read it)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.message = ""

    def say(self, message: str, kind: str = "info") -> None:
        self.message = f"{SIGNS[kind]} {message}"
        for name in SIGNS:
            self.set_class(name == kind, f"-{name}")
        self.update(Text(self.message))
