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

import pytest

from im.config.connection import open_connector
from im.connectors.base import Connector
from im.store import meta, open_database
from tests import invariants
from tests.simulation import Outcome, make_template, simulation

MASTER_KEY = base64.b64encode(bytes(range(32))).decode()

# Seeds that found a bug, run every time (each fixed in the engine; what it found).
KEPT: dict[int, str] = {}


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
