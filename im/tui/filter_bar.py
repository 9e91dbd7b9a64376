"""The filter: integration names and/or INC-n, narrowing the list as it is typed."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Input

PLACEHOLDER = "press / to filter by integration and/or incident (e.g. prod-jira INC-3)"


class FilterBar(Input):
    """A one-line input; Enter or Escape hands the keys back (``FilterBar.Done``)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "done", "Done", show=False)]

    class Done(Message):
        """Typing the filter is finished."""

    def __init__(self, value: str = "", *, id: str | None = None) -> None:
        super().__init__(value, placeholder=PLACEHOLDER, compact=True, id=id)

    def action_done(self) -> None:
        self.post_message(self.Done())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.post_message(self.Done())
