"""The review app: a thin App wiring the widgets to ``Review`` (im.tui.review).

Every database call runs in a worker thread (``Review`` opens its own connection each time),
so the screen never waits on SQLite; the results come back as worker state changes. The list
refreshes itself every ``refresh_every`` seconds (None: only on ``r``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.widget import Widget
from textual.widgets import Footer, Header
from textual.worker import Worker, WorkerState

from im.clock import Clock
from im.sync import conflicts
from im.tui.confirm import ConfirmScreen
from im.tui.conflict_detail import ConflictDetail
from im.tui.conflict_table import ConflictTable
from im.tui.filter_bar import FilterBar
from im.tui.review import Review, describe, narrow
from im.tui.status_line import StatusLine

W = TypeVar("W", bound=Widget)

REFRESH_EVERY = 3.0  # seconds
_MAIN_SCREEN_ONLY = frozenset({"resolve", "filter", "refresh", "quit"})


class ConflictReviewApp(App[int]):
    """``principal`` reviewing the pending conflicts in the database at ``db_path``."""

    CSS_PATH = "im.tcss"
    TITLE = "im conflict review"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "resolve('platform')", "use platform"),
        Binding("e", "resolve('external')", "use external"),
        Binding("i", "resolve('ignore')", "ignore"),
        Binding("slash", "filter", "filter", key_display="/"),
        Binding("r", "refresh", "refresh"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(
        self,
        db_path: Path,
        clock: Clock,
        principal: str,
        *,
        filter_text: str = "",
        refresh_every: float | None = REFRESH_EVERY,
    ) -> None:
        super().__init__()
        self.review = Review(db_path, clock, principal)
        self.clock = clock
        self.filter_text = filter_text
        self.refresh_every = refresh_every
        self.pending: list[dict[str, Any]] = []
        self.loaded = False
        self._loading = False
        self._load_failed = False  # the status line shows a load's error
        self.sub_title = principal

    def compose(self) -> ComposeResult:
        yield Header(icon="≡")
        yield FilterBar(self.filter_text, id="filter")
        yield ConflictTable(id="conflicts")
        yield ConflictDetail(id="detail")
        yield StatusLine(id="status")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self._main(ConflictTable).focus()
        self._explain_empty()
        self.action_refresh()
        if self.refresh_every:
            self.set_interval(self.refresh_every, self._tick)

    # keys

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # under the confirmation, only its own keys work
        return not (action in _MAIN_SCREEN_ONLY and isinstance(self.screen, ConfirmScreen))

    def action_refresh(self) -> None:
        self._loading = True
        self.run_worker(
            self.review.pending, name="load", group="load", thread=True, exclusive=True,
            exit_on_error=False,
        )  # fmt: skip

    def action_filter(self) -> None:
        self._main(FilterBar).focus()

    def action_resolve(self, choice: str) -> None:
        conflict = self._main(ConflictTable).current
        if conflict is None:
            self._main(StatusLine).say("no conflict selected", "info")
            return
        self.run_worker(
            # its own group: a new check must never cancel a resolve still being made
            partial(self._check, conflict, choice), name="check", group="check",
            thread=True, exclusive=True, exit_on_error=False,
        )  # fmt: skip

    def _main(self, kind: type[W]) -> W:
        """A widget of the main screen, also while the confirm box is on top (the app's own
        query_one looks at the screen on top only)."""
        return self.screen_stack[0].query_one(kind)

    # what the widgets say

    def on_input_changed(self, event: FilterBar.Changed) -> None:
        self.filter_text = event.value
        self._show()

    def on_filter_bar_done(self, _: FilterBar.Done) -> None:
        self._main(ConflictTable).focus()

    def on_conflict_table_highlighted(self, event: ConflictTable.Highlighted) -> None:
        if event.conflict is None:
            self._explain_empty()
        else:
            self._main(ConflictDetail).show(event.conflict)

    def _explain_empty(self) -> None:
        if not self.loaded:
            why = "loading…"
        elif self.pending:
            why = f"no pending conflict matches {self.filter_text.strip()!r}"
        else:
            why = "no pending conflicts: nothing to review"
        self._main(ConflictDetail).show(None, why)

    # the workers (threads: each Review call opens its own connection)

    def _tick(self) -> None:
        if not self._loading:
            self.action_refresh()

    def _check(self, conflict: Mapping[str, Any], choice: str) -> tuple[Mapping[str, Any], str]:
        self.review.check(str(conflict["id"]))
        return conflict, choice

    def _resolve(self, conflict: Mapping[str, Any], choice: str) -> str:
        done = self.review.resolve(str(conflict["id"]), choice)
        return f"conflict-{done['id']} {conflicts.outcome(choice)}"

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        try:
            status = self._main(StatusLine)
        except (IndexError, NoMatches):
            return  # the app is closing (or not composed yet): nowhere to show a result
        worker = event.worker
        if worker.name == "load" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            self._loading = False
        if event.state is WorkerState.ERROR:
            status.say(describe(worker.error or RuntimeError()), "error")
            self._load_failed = worker.name == "load"
            if worker.name == "resolve":  # it may have been resolved meanwhile
                self.action_refresh()
        if event.state is not WorkerState.SUCCESS:
            return
        result: Any = worker.result
        if worker.name == "load":
            self.pending, self.loaded = result, True
            self._show()
            if self._load_failed:  # the list reads again: the old error no longer holds
                self._load_failed = False
                status.say("the list reads again", "info")
        elif worker.name == "check":
            conflict, choice = result
            self.push_screen(
                ConfirmScreen(conflict, choice), partial(self._answered, conflict, choice)
            )
        elif worker.name == "resolve":
            status.say(result, "ok")
            self.action_refresh()

    def _answered(self, conflict: Mapping[str, Any], choice: str, yes: bool | None) -> None:
        if not yes:
            self._main(StatusLine).say(f"cancelled: {conflict['id']} left pending", "info")
            return
        self.run_worker(
            partial(self._resolve, conflict, choice), name="resolve", group="resolve",
            thread=True, exit_on_error=False,
        )  # fmt: skip

    def _show(self) -> None:
        shown = narrow(self.pending, self.filter_text)
        self._main(ConflictTable).show(shown)
        if not shown:
            self._explain_empty()
        count = f"{len(self.pending)} pending"
        if len(shown) != len(self.pending):
            count = f"{len(shown)} of {len(self.pending)} shown"
        at = self.clock.now().strftime("%H:%M:%SZ")
        self.sub_title = f"{self.review.principal} · {count} · as of {at}"
