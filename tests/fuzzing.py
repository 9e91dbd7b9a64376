"""What the fuzz tests share: their Hypothesis settings and a world that lives for a module.

In the suite each fuzzer runs a small, derandomized share (the same examples every run, so CI
is stable). A longer campaign draws fresh examples: ``IM_FUZZ_EXAMPLES=N`` runs N examples
per fuzz test (for the API: per operation and caller) instead, from a random seed; a failure
prints the seed (``--hypothesis-seed``) and a ``@reproduce_failure`` blob. About 10x the
suite's share, a few minutes each:

    IM_FUZZ_EXAMPLES=250 python -m pytest -q tests/test_api_fuzz.py
    IM_FUZZ_EXAMPLES=600 python -m pytest -q tests/test_webhook_fuzz.py
    IM_FUZZ_EXAMPLES=3000 python -m pytest -q tests/test_cli_fuzz.py
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from im.clock import FrozenClock
from tests.conftest import START, Im
from tests.two_way import Two, two_way

CAMPAIGN = os.environ.get("IM_FUZZ_EXAMPLES", "").strip()


def fuzz_settings(examples: int) -> settings:
    """``examples`` derandomized examples, or the campaign's count drawn at random."""
    campaign = int(CAMPAIGN) if CAMPAIGN else 0
    return settings(
        max_examples=campaign or examples,
        derandomize=not campaign,
        database=None,
        deadline=None,
        print_blob=True,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )


def home_env(env: pytest.MonkeyPatch, home: Path) -> None:
    """Where a world made in ``home`` keeps its master key: tests/conftest.py's
    ``isolated_env`` points each test elsewhere, so a shared world's tests point back."""
    env.setenv("XDG_CONFIG_HOME", str(home / "config"))
    env.setenv("XDG_DATA_HOME", str(home / "data"))


@contextmanager
def shared_two(home: Path) -> Iterator[Two]:
    """The two-way world of tests/two_way.py (the platform's daemon app, the three
    simulators, every integration bidirectional, a frozen clock), made once for a module's
    tests in ``home``, with the environment conftest's ``isolated_env`` gives one test."""
    with pytest.MonkeyPatch.context() as env:
        home_env(env, home)
        env.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
        env.setenv("IM_USER", "alice")
        for name in ("IM_DB", "IM_MASTER_KEY", "IM_PASSWORD", "IM_API_TOKEN", "IM_WEBHOOK_SECRET"):
            env.delenv(name, raising=False)
        env.setenv("IM_BUSY_TIMEOUT", "5")
        clock = FrozenClock(START)
        im = Im(home / "im.db", clock)
        im.ok("init")
        with two_way(im, clock) as two:
            yield two
