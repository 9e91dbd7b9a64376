"""The deterministic simulation (SPEC §14): seeded random workloads on both sides of the real
engine, with faults and restarts, then the invariant (tests/simulation.py runs it,
tests/invariants.py checks it).

``pytest tests/test_simulation.py`` runs the kept seeds and seeds 0-199; ``--seed N`` runs one
seed (a failure prints that command); ``--seeds COUNT`` runs more (the soak, see the README).
"""

from __future__ import annotations

import base64
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from im.clock import format_time
from im.config.connection import open_connector
from im.connectors.base import Connector
from im.store import meta, open_database
from im.store import outbox as outbox_rows
from im.store.db import write
from im.sync.dispatcher import Dispatcher
from tests import invariants
from tests.simulation import Crash, Outcome, make_template, simulation
from tests.test_reconcile import jira_put, jira_summary, snow_patch, snow_record
from tests.two_way import Two, new_incident

MASTER_KEY = base64.b64encode(bytes(range(32))).decode()

# Seeds that found a bug, run every time (each fixed in the engine). Two more bugs are kept
# as hand-made runs at the end of this file.
KEPT = (
    292,  # a Jira comment on our unlinked issue (create answer lost) made a second incident
    69,  # reconcile skipped an in-flight field PagerDuty had changed too: nothing decided it
    4,  # an adopted PagerDuty "no priority", snapshotted as p3, was refused on every run
    2,  # our own create's event (no description yet) rolled back a newer description
    62,  # finishing a found create overwrote a person's edit of a field its POST wrote
    589,  # a create linked meanwhile was sent as an update, judged on snapshots never made
    2690,  # a person's edit between the dispatcher's read and write was taken for stale
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("--seed")
    if chosen is not None:
        seeds = [chosen]
    else:
        count = metafunc.config.getoption("--seeds")
        seeds = [*KEPT, *(n for n in range(count) if n not in KEPT)]
    metafunc.parametrize("seed", seeds, ids=[f"seed{n}" for n in seeds])


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The database every seed starts from a copy of (made once, by the real CLI)."""
    directory = tmp_path_factory.mktemp("simulation")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_CONFIG_HOME", str(directory / "config"))
        env.setenv("XDG_DATA_HOME", str(directory / "data"))
        env.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
        env.setenv("IM_MASTER_KEY", MASTER_KEY)
        return make_template(directory)


@pytest.fixture
def world(template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IM_MASTER_KEY", MASTER_KEY)  # the template's secrets open with it
    return template


def simulate(seed: int, tmp_path: Path, template: Path) -> Outcome:
    """Run one seed and check the invariant; a failure names the seed and shows the run."""
    with simulation(seed, tmp_path) as sim:
        try:
            outcome = sim.run(template)
        except Exception as exc:  # the engine (or the harness) raised: the seed and its run
            trace = "\n".join(sim.trace)
            raise AssertionError(
                f"seed {seed} failed ({type(exc).__name__}: {exc}); reproduce with "
                f"`pytest tests/test_simulation.py --seed {seed}`\nthe run:\n{trace}"
            ) from exc
        db = open_database(sim.im.db_path)
        with ExitStack() as stack:
            made: dict[int, Connector] = {}

            def connector_for(integration: Any) -> Connector:
                if integration["id"] not in made:
                    connector = open_connector(
                        db,
                        integration,
                        transport=sim.sims[integration["name"]].transport(),
                        sleep=sim.clock.advance,
                    )
                    stack.callback(connector.close)
                    made[integration["id"]] = connector
                return made[integration["id"]]

            stack.callback(db.close)
            problems = invariants.check(
                db, sim.sims, connector_for, outcome.reconciles, meta.require(db, "install_id"),
                outcome.writes, outcome.made_there,
            )  # fmt: skip
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        trace = "\n".join(outcome.trace)
        pytest.fail(
            f"seed {seed} breaks the invariant; reproduce with "
            f"`pytest tests/test_simulation.py --seed {seed}`\n{lines}\nthe run:\n{trace}",
            pytrace=False,
        )
    return outcome


def test_simulation(seed: int, tmp_path: Path, world: Path) -> None:
    simulate(seed, tmp_path, world)


def test_the_same_seed_makes_the_same_run(
    tmp_path: Path, world: Path, pytestconfig: pytest.Config
) -> None:
    """Every operation and the final state on every side, twice (``--seed N``: that one)."""
    seed = pytestconfig.getoption("--seed")
    seed = 7 if seed is None else seed
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = simulate(seed, tmp_path / "first", world)
    second = simulate(seed, tmp_path / "second", world)
    assert first.trace == second.trace
    assert first.digest == second.digest


# -- what the simulation found, replayed by hand ------------------------------------------------
# Two of the bugs the simulation found no longer show in its current workload within a few
# thousand seeds (other fixes catch their symptoms first); each is kept here as the smallest
# run that shows it.


def test_a_status_the_platform_refused_does_not_hold_back_its_next_status(two: Two) -> None:
    """Found by seed 250 of an earlier workload: a ServiceNow agent moved an acknowledged
    incident back to New, which the platform refused; the platform's later resolve then met
    New as a concurrent edit and waited for an event that had already come."""
    n = new_incident(two)
    two.im.ok("incident", "update", f"INC-{n}", "--status", "acknowledged")
    two.sync()
    two.clock.advance(10)
    snow_patch(two, n, {"state": "1"})
    two.sync()  # refused: acknowledged cannot go back to triggered
    assert two.incident(n)["status"] == "acknowledged"
    two.clock.advance(60)
    two.im.ok("incident", "update", f"INC-{n}", "--status", "resolved")
    two.sync()
    assert snow_record(two, n)["state"] == "6"


def test_a_person_edit_after_a_send_cut_short_is_not_overwritten(two: Two) -> None:
    """Found by seed 179 of an earlier workload: the daemon died while sending a title; a
    person then retitled the issue; the retry took any title there for a state on its way
    (as it may for a status walked through Jira's transitions) and overwrote it."""
    n = new_incident(two)
    two.sync()
    two.clock.advance(10)
    two.im.ok("incident", "update", f"INC-{n}", "--title", "platform title")
    jira = two.sims["prod-jira"]

    class DiesWhileSending(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "PUT":
                raise Crash  # before Jira sees the write
            return jira.transport().handle_request(request)

    dying = Dispatcher(
        two.db(), two.clock, transport_for=lambda integration: DiesWhileSending(),
        sleep=two.clock.advance,
    )  # fmt: skip
    with pytest.raises(Crash):
        dying.step()
    dying.close()
    two.clock.advance(120)
    jira_put(two, n, {"summary": "agent title"})
    two.clock.advance(60)  # the daemon starts again, takes its lease back, and retries
    with write(two.db()):
        outbox_rows.reap(two.db(), format_time(two.clock.now()), every=True)
    two.sync()
    assert jira_summary(two, n) == "agent title"
    assert two.incident(n)["title"] == "agent title"  # the later change, on both sides
