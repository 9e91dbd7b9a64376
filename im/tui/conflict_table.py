"""The pending conflicts, one row each; the highlighted one is marked with ▶ (not only by
colour) and announced with ``ConflictTable.Highlighted``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from rich.cells import cell_len, set_cell_size
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable

from im.model import printable

MARK = "▶"
# (key in conflicts.view, heading, widest it is shown); the two values share what is left
FIXED = (
    ("id", "conflict", 12),
    ("incident", "incident", 9),
    ("integration", "integration", 16),
    ("field", "field", 14),
)
VALUES = (("platform_value", "platform"), ("external_value", "external"))
SCROLLBAR = 1  # im.tcss: scrollbar-size-vertical


def clip(value: str, width: int) -> str:
    """``value`` on one line in at most ``width`` cells, ending in … when cut."""
    line = printable(" ".join(value.split())) or "(empty)"
    if cell_len(line) <= width:
        return line
    return set_cell_size(line, max(width - 1, 0)) + "…"


class ConflictTable(DataTable[str]):
    """One row per conflict, keyed by its id (``conflict-N``)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
    ]

    class Highlighted(Message):
        """The conflict under the cursor changed (None: the table is empty)."""

        def __init__(self, conflict: Mapping[str, Any] | None) -> None:
            super().__init__()
            self.conflict = conflict

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.rows_shown: list[Mapping[str, Any]] = []
        self._layout: tuple[int, int, list[Mapping[str, Any]]] | None = None
        self._marked: str | None = None

    @property
    def current(self) -> Mapping[str, Any] | None:
        """The highlighted conflict, if any."""
        if not self.rows_shown:
            return None
        return self.rows_shown[min(self.cursor_row, len(self.rows_shown) - 1)]

    def show(self, conflicts: Sequence[Mapping[str, Any]]) -> None:
        """Show ``conflicts``, keeping the cursor on the same conflict when it is still
        there (else on the same line)."""
        width = self.size.width or self.app.size.width
        layout = (width, self.size.height, list(conflicts))
        if self._layout == layout:
            return
        self._layout = layout
        keep = self.current["id"] if self.current else None
        line = self.cursor_row
        self.rows_shown = list(conflicts)
        self._marked = None
        self.clear(columns=True)
        columns = list(zip(self._headings(), self._widths(width), strict=True))
        for (key, heading), size in columns:
            self.add_column(heading, key=key, width=size)
        for row in self.rows_shown:
            cells = [clip(str(row[key]), size) for (key, _), size in columns[1:]]
            self.add_row(" ", *cells, key=str(row["id"]))
        ids = [str(row["id"]) for row in self.rows_shown]
        if ids:
            self.move_cursor(row=ids.index(keep) if keep in ids else min(line, len(ids) - 1))
        self._announce()

    def on_resize(self) -> None:
        if self._layout is not None:
            self.show(self.rows_shown)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._announce()

    def _announce(self) -> None:
        conflict = self.current
        key = str(conflict["id"]) if conflict else None
        if key != self._marked:
            if self._marked is not None and self._marked in self.rows:
                self.update_cell(self._marked, "mark", " ")
            if key is not None:
                self.update_cell(key, "mark", MARK)
            self._marked = key
        self.post_message(self.Highlighted(conflict))

    @staticmethod
    def _headings() -> list[tuple[str, str]]:
        return [("mark", ""), *((key, heading) for key, heading, _ in FIXED), *VALUES]

    def _widths(self, width: int) -> list[int]:
        fixed = [
            max(cell_len(heading), *(cell_len(str(r[key])) for r in self.rows_shown), 1)
            for key, heading, _ in FIXED
        ]
        fixed = [min(size, cap) for size, (_, _, cap) in zip(fixed, FIXED, strict=True)]
        columns = 1 + len(FIXED) + len(VALUES)
        scrollbar = SCROLLBAR if len(self.rows_shown) > self.size.height - 1 else 0
        left = width - scrollbar - 2 * self.cell_padding * columns - len(MARK) - sum(fixed)
        value = max(left // 2, 8)
        return [len(MARK), *fixed, value, value]
