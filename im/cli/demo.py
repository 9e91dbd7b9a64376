"""``im demo``: the guide's walk-through on local simulators and a real daemon."""

from __future__ import annotations

import click


@click.command()
@click.option(
    "--keep",
    is_flag=True,
    help="After the steps, keep the simulators and the daemon running and print how to point "
    "the CLI at them, including the demo's throw-away master key (never a key of yours); "
    "Ctrl-C then stops everything and removes it.",
)
def demo(keep: bool) -> None:
    """Run the guide's story end to end on local simulators, with no account anywhere.

    Starts the ServiceNow, Jira and PagerDuty simulators and `im daemon` on free loopback
    ports, with a throw-away database and master key in a temporary directory (your database,
    key, keyring and configuration are never touched), creates one bidirectional integration
    of each type with default ownership (named prod-snow, prod-jira and prod-pd, as in the
    guide), and walks through the guide: an incident created here appears in all three
    systems; an agent's reassignment in ServiceNow flows back and on to PagerDuty; a
    simultaneous edit becomes a conflict and is resolved; a lost webhook is found by drift
    reconciliation and healed; a failing system's update lands in the dead letter queue and
    `dlq-retry` delivers it. Each step shows the `im` command that does the same by hand and
    the propagation times measured.

    Exits 0 when every step held (with --keep, also when Ctrl-C ends it), 1 naming the first
    step that did not, 130 on Ctrl-C during the steps; everything it started is stopped and
    removed in every case.
    """
    from im.sim.demo import run

    run(keep=keep)
