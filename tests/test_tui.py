"""`im conflict review` (SPEC §6, §12): the real Textual app driven by Pilot at 80×24 on the
two-way world, with conflicts made by real simultaneous edits (prod-jira on INC-1, prod-snow on
INC-2, both held for manual review). Resolving goes through the same library call as the CLI;
the outcome is checked in the database, then in the simulators after a sync."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot
from textual.worker import WorkerState

from im.tui.app import ConflictReviewApp
from im.tui.confirm import ConfirmScreen
from im.tui.conflict_table import ConflictTable
from im.tui.review import narrow
from im.tui.status_line import StatusLine
from tests.test_conflicts import jira_title, simultaneous
from tests.test_reconcile import snow_patch
from tests.two_way import Two, new_incident

SIZE = (80, 24)
Scenario = Callable[[ConflictReviewApp, Pilot[int]], Awaitable[None]]


@pytest.fixture
def world(two: Two) -> Iterator[Two]:
    """conflict-1: INC-1's title in prod-jira; conflict-2: INC-2's title in prod-snow."""
    two.im.ok("integration", "configure", "prod-snow", "--conflict-strategy", "manual-review")
    assert simultaneous(two, "manual-review") == 1
    snow_conflict(two, "platform title 2", "agent title 2")
    yield two


def snow_conflict(two: Two, platform: str, agent: str) -> int:
    """A new synced incident whose title is then changed here and by an agent in ServiceNow
    two seconds apart, before either side has seen the other."""
    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", platform)
    two.clock.advance(2)
    snow_patch(two, n, {"short_description": agent})
    two.sync()
    return n


def review(two: Two, principal: str = "alice", **options: Any) -> ConflictReviewApp:
    options.setdefault("refresh_every", None)
    return ConflictReviewApp(two.im.db_path, two.clock, principal, **options)


def drive(app: ConflictReviewApp, scenario: Scenario) -> None:
    """Run ``app`` at 80×24 and play ``scenario`` once the first listing is in."""

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await scenario(app, pilot)

    asyncio.run(run())


async def settle(pilot: Pilot[Any]) -> None:
    """Wait until no worker is running and their results have been handled (a result may
    start another worker: a resolve refreshes the list)."""
    app = pilot.app
    while True:
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not any(w.state in (WorkerState.PENDING, WorkerState.RUNNING) for w in app.workers):
            return


def screen_text(app: ConflictReviewApp) -> str:
    """The screen as plain text, colour and styles dropped: what a monochrome terminal
    conveys. (Textual exports screenshots only as SVG; this renders the same compositor
    output through a colourless console.)"""
    console = Console(
        width=app.size.width,
        height=app.size.height,
        file=io.StringIO(),
        record=True,
        color_system=None,
        legacy_windows=False,
    )
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    console.print(update)
    return console.export_text()


def shown(app: ConflictReviewApp) -> list[str]:
    return [str(row["id"]) for row in app.query_one(ConflictTable).rows_shown]


def current(app: ConflictReviewApp) -> str:
    conflict = app.query_one(ConflictTable).current
    assert conflict is not None
    return str(conflict["id"])


def status(app: ConflictReviewApp) -> str:
    return app.query_one(StatusLine).message


def conflict_row(two: Two, n: int) -> dict[str, Any]:
    row = two.db().execute("SELECT status, winner FROM conflicts WHERE id = ?", [n]).fetchone()
    return {"status": row[0], "winner": row[1]}


def audit(two: Two, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(two.im.ok("audit", "--action", "conflict", "--format", "json", *args)))


# the list and the detail -----------------------------------------------------------------


def test_lists_pending_conflicts_with_both_values_side_by_side(world: Two) -> None:
    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        assert shown(app) == ["conflict-1", "conflict-2"]
        text = screen_text(app)
        lines = text.splitlines()
        assert len(lines) == 24 and max(len(line) for line in lines) <= 80
        # the selected row is marked by a sign, not only by colour
        assert any(line.lstrip().startswith("▶  conflict-1") for line in lines)
        [sides] = [line for line in lines if "value" in line]
        assert "platform title" in sides and "agent title" in sides
        for shown_text in (
            "platform (p)",
            "external: prod-jira (e)",
            "incident INC-1",
            "field title",
            "strategy manual-review",
            "detected 2026-11-27T09:00:12.000Z",
            "at    2026-11-27T09:00:10.000Z",  # the platform's edit
            "at    2026-11-27T09:00:12.000Z",  # the agent's, two seconds later
            "alice",
            "agent@example.com",
            "p use platform",
            "e use external",
            "i ignore",
            "/ filter",
            "r refresh",
            "q quit",
        ):
            assert shown_text in text, shown_text
        # j / k and the arrows move; the marker and the detail follow
        await pilot.press("j")
        text = screen_text(app)
        assert "▶  conflict-2" in text and "external: prod-snow (e)" in text
        assert "agent title 2" in text
        await pilot.press("k")
        assert "▶  conflict-1" in screen_text(app)
        await pilot.press("down")
        assert current(app) == "conflict-2"
        await pilot.press("up")
        assert current(app) == "conflict-1"

    drive(review(world), scenario)


def test_long_values_are_cut_in_the_list_and_whole_in_the_detail(two: Two) -> None:
    long = "Checkout API returns 5xx for every EU card payment since the 09:00 deploy"
    two.im.ok("integration", "configure", "prod-snow", "--conflict-strategy", "manual-review")
    snow_conflict(two, long, "agent title")

    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        text = screen_text(app)
        [row] = [line for line in text.splitlines() if line.startswith(" ▶  conflict-1")]
        assert "Checkout API" in row and "…" in row and "agent title" in row
        flat = " ".join(" ".join(line.strip(" │") for line in text.splitlines()).split())
        for word in long.split():
            assert word in flat

    drive(review(two), scenario)


def test_empty_list_says_so(two: Two) -> None:
    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        assert shown(app) == []
        assert "no pending conflicts: nothing to review" in screen_text(app)
        await pilot.press("p")
        assert status(app) == "· no conflict selected"

    drive(review(two), scenario)


# filtering -------------------------------------------------------------------------------


def test_filter_by_integration_and_by_incident(world: Two) -> None:
    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("/")
        assert app.focused is not None and app.focused.id == "filter"
        await pilot.press(*"prod-snow")
        assert shown(app) == ["conflict-2"]
        assert "external: prod-snow (e)" in screen_text(app)
        assert "alice · 1 of 2 shown · as of 09:00:24Z" in app.sub_title
        await pilot.press("ctrl+u", *"inc-1")
        assert shown(app) == ["conflict-1"]
        await pilot.press(*" prod-snow")  # both kinds must hold
        assert shown(app) == []
        assert "no pending conflict matches 'inc-1 prod-snow'" in screen_text(app)
        await pilot.press("enter")  # back to the list; the filter stays
        assert isinstance(app.focused, ConflictTable)
        await pilot.press("/", "ctrl+u", "escape")
        assert shown(app) == ["conflict-1", "conflict-2"]
        assert isinstance(app.focused, ConflictTable)

    drive(review(world), scenario)

    async def started_filtered(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        assert shown(app) == ["conflict-1"]

    drive(review(world, filter_text="prod-jira INC-1"), started_filtered)


def test_filter_terms() -> None:
    rows = [
        {"incident": "INC-3", "integration": "prod-jira"},
        {"incident": "INC-30", "integration": "prod-snow"},
        {"incident": "INC-3", "integration": "prod-snow"},
    ]
    assert narrow(rows, "") == rows
    assert narrow(rows, "INC-3") == [rows[0], rows[2]]  # exactly, not INC-30
    assert narrow(rows, "jira") == [rows[0]]
    assert narrow(rows, "prod-snow inc-3") == [rows[2]]
    assert narrow(rows, "prod-jira prod-snow") == rows
    assert narrow(rows, "INC-30 INC-3 jira") == [rows[0]]


# resolving -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "status_", "winner", "platform_title", "jira"),
    [
        ("p", "resolved", "platform", "platform title", "platform title"),
        ("e", "resolved", "external", "agent title", "agent title"),
        ("i", "ignored", None, "platform title", "agent title"),
    ],
    ids=["platform", "external", "ignore"],
)
def test_resolve_each_way_after_confirming(
    world: Two, key: str, status_: str, winner: str | None, platform_title: str, jira: str
) -> None:
    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press(key)
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert "Resolve conflict-1?" in screen_text(app)
        await pilot.press("y")
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmScreen)
        expected = "ignored (both sides kept)" if key == "i" else f"resolved: {winner} value wins"
        assert status(app) == f"✓ conflict-1 {expected}"
        assert shown(app) == ["conflict-2"]  # no longer pending

    drive(review(world), scenario)
    assert conflict_row(world, 1) == {"status": status_, "winner": winner}
    assert conflict_row(world, 2) == {"status": "pending", "winner": None}
    world.sync()
    assert world.incident(1)["title"] == platform_title
    assert jira_title(world, 1) == jira
    [entry] = audit(world)
    assert (entry["principal"], entry["via"], entry["action"]) == (
        "alice",
        "tui",
        "conflict.resolve",
    )
    assert (entry["decision"], entry["outcome"], entry["target"]) == (
        "allow",
        "ok",
        "on INC-1 of prod-jira",
    )


def test_enter_confirms_too(world: Two) -> None:
    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("j", "e")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert status(app) == "✓ conflict-2 resolved: external value wins"

    drive(review(world), scenario)
    assert conflict_row(world, 2) == {"status": "resolved", "winner": "external"}
    world.sync()
    assert world.incident(2)["title"] == "agent title 2"


def test_cancelling_the_confirmation_changes_nothing(world: Two) -> None:
    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        for key, answer in (("p", "n"), ("e", "escape"), ("i", "n")):
            await pilot.press(key)
            await settle(pilot)
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("q", "r", "p")  # the list's keys do nothing under the question
            assert len(app.screen_stack) == 2
            await pilot.press(answer)
            await settle(pilot)
            assert not isinstance(app.screen, ConfirmScreen)
            assert status(app) == "· cancelled: conflict-1 left pending"
        assert shown(app) == ["conflict-1", "conflict-2"]

    drive(review(world), scenario)
    assert conflict_row(world, 1) == {"status": "pending", "winner": None}
    assert audit(world) == []


def test_a_conflict_resolved_meanwhile_is_an_error_and_logged_as_failed(world: Two) -> None:
    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("p")
        await settle(pilot)
        world.im.ok("conflict", "resolve", "conflict-1", "--ignore")  # someone else, meanwhile
        await pilot.press("y")
        await settle(pilot)
        assert status(app) == "✗ conflict-1 is already ignored"
        assert shown(app) == ["conflict-2"]

    drive(review(world), scenario)
    assert conflict_row(world, 1)["status"] == "ignored"
    outcomes = [(e["via"], e["outcome"], e["error"]) for e in audit(world)]
    assert sorted(outcomes) == [
        ("cli", "ok", None),
        ("tui", "failed", "conflict-1 is already ignored"),
    ]


# access ----------------------------------------------------------------------------------


def test_a_viewer_sees_the_list_but_may_not_resolve(world: Two) -> None:
    world.im.ok("access", "grant", "vic", "--role", "viewer")

    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        assert shown(app) == ["conflict-1", "conflict-2"]
        await pilot.press("p")
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmScreen)  # refused before asking
        reason = "vic (viewer) may not conflict.resolve on INC-1"
        assert status(app).startswith(f"✗ access denied: {reason}")
        assert reason in screen_text(app)
        assert shown(app) == ["conflict-1", "conflict-2"]

    drive(review(world, "vic"), scenario)
    assert conflict_row(world, 1) == {"status": "pending", "winner": None}
    [denied] = audit(world, "--denied")
    assert (denied["principal"], denied["via"], denied["action"]) == (
        "vic",
        "tui",
        "conflict.resolve",
    )
    assert (
        denied["decision"] == "deny"
        and denied["reason"] == "vic (viewer) may not conflict.resolve on INC-1"
    )


def test_a_manager_sees_only_the_integrations_in_scope(world: Two) -> None:
    world.im.ok("access", "grant", "bob", "--role", "integration.manager", "--scope", "prod-j*")

    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        assert shown(app) == ["conflict-1"]

    drive(review(world, "bob"), scenario)


def test_the_command_needs_conflict_list_a_terminal_and_known_filters(world: Two) -> None:
    nobody = world.im("conflict", "review", env={"IM_USER": "nobody"})
    assert nobody.exit_code == 1 and "access denied: nobody has no role" in nobody.stderr
    piped = world.im("conflict", "review", "--integration", "prod-jira", "--incident", "inc-1")
    assert piped.exit_code == 2 and piped.stdout == ""
    assert piped.stderr.splitlines() == [
        "error: im conflict review needs a terminal (use `im conflict list` in scripts and pipes)"
    ]
    unknown = world.im("conflict", "review", "--integration", "prod-jiar")
    assert unknown.exit_code == 1 and "prod-jira" in unknown.stderr  # did you mean
    assert world.im("conflict", "review", "--incident", "INC-9").exit_code == 1


# refresh and quit ------------------------------------------------------------------------


def test_live_refresh_picks_up_a_new_conflict(two: Two) -> None:
    two.im.ok("integration", "configure", "prod-snow", "--conflict-strategy", "manual-review")
    simultaneous(two, "manual-review")

    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        assert shown(app) == ["conflict-1"]
        snow_conflict(two, "platform title 2", "agent title 2")  # while the app runs
        for _ in range(200):
            await pilot.pause(0.02)
            if len(shown(app)) == 2:
                break
        assert shown(app) == ["conflict-1", "conflict-2"]
        assert current(app) == "conflict-1"

    drive(review(two, refresh_every=0.05), scenario)


def test_r_refreshes_and_q_quits(world: Two) -> None:
    app = review(world)

    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        world.im.ok("conflict", "resolve", "conflict-2", "--use-platform")
        assert shown(app) == ["conflict-1", "conflict-2"]  # no live refresh here
        await pilot.press("r")
        await settle(pilot)
        assert shown(app) == ["conflict-1"]
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running

    drive(app, scenario)
    assert app.return_code == 0


# snapshots (80×24, frozen clock, stable ids) ----------------------------------------------


async def _loaded(pilot: Pilot[Any]) -> None:
    await settle(pilot)


def test_snapshot_list_with_detail(world: Two, snap_compare: Any) -> None:
    assert snap_compare(review(world), terminal_size=SIZE, run_before=_loaded)


def test_snapshot_confirm_ignore(world: Two, snap_compare: Any) -> None:
    async def ask(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("j", "i")
        await settle(pilot)

    assert snap_compare(review(world), terminal_size=SIZE, run_before=ask)


def test_snapshot_long_value_and_a_denial(two: Two, snap_compare: Any) -> None:
    two.im.ok("integration", "configure", "prod-snow", "--conflict-strategy", "manual-review")
    snow_conflict(
        two,
        "Checkout API returns 5xx for every EU card payment since the 09:00 deploy",
        "EU card payments failing",
    )
    two.im.ok("access", "grant", "vic", "--role", "viewer")

    async def refused(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)

    assert snap_compare(review(two, "vic"), terminal_size=SIZE, run_before=refused)


def test_a_refresh_while_the_confirm_box_is_open_lands_on_the_list(world: Two) -> None:
    """The live refresh keeps running behind the confirm box; its result goes to the list
    underneath, and the answer still resolves."""

    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("i")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        world.im.ok("conflict", "resolve", "conflict-2", "--use-platform")
        app.action_refresh()
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        assert shown(app) == ["conflict-1"]
        await pilot.press("y")
        await settle(pilot)
        assert shown(app) == []

    drive(review(world), scenario)


def test_control_characters_from_outside_are_shown_not_obeyed(world: Two) -> None:
    """An agent's value holding escape sequences (a window retitle, a colour) or tabs is
    shown escaped in the list, the detail and the question: the terminal never acts on it."""
    hostile = "\x1b]2;PWNED\x1b\\\ttabbed \x1b[31mred"
    db = world.im.db()
    with db.conn:
        db.execute("UPDATE conflicts SET external_value = ? WHERE id = 1", [hostile])
    db.close()

    async def scenario(app: ConflictReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("e")
        await settle(pilot)
        text = screen_text(app)
        assert "\x1b" not in text and "\t" not in text
        assert "\\x1b]2;PWNED" in text

    drive(review(world), scenario)
