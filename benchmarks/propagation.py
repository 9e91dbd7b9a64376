"""SPEC §13: platform -> external propagation at a steady rate, through a real `im daemon`
and the three simulators, each in its own process on loopback. Prints JSON. Not part of the
test run:

    python benchmarks/propagation.py [--rate 50] [--duration 60] [--incidents 50]
                                     [--outbound-only]

Each change updates one incident's title; every integration gets it. Propagation of a change
is the time from its commit to the outbox row being acknowledged by the vendor (a change that
was coalesced into a waiting row counts from the row's first commit: the slowest of them).
The integrations are bidirectional and the simulators send their webhooks to the daemon, so
our own writes come back as echoes while the load runs, as in use (`--outbound-only`:
outbound integrations and no webhooks).
"""

from __future__ import annotations

import argparse
import json

from common import latencies, paced, scalar, spec_row, wait_settled, world

from im.clock import SystemClock, format_time, parse_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=50.0, help="changes per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--incidents", type=int, default=50, help="incidents changed in turn")
    parser.add_argument(
        "--outbound-only", action="store_true", help="outbound integrations, no webhooks"
    )
    args = parser.parse_args()

    from im import incidents
    from im.store import open_database

    direction = "outbound" if args.outbound_only else "bidirectional"
    with world(webhooks=not args.outbound_only, direction=direction) as here:
        db = open_database(here.db_path)
        clock = SystemClock()
        for n in range(args.incidents):
            incidents.create(db, clock, "bench", {"title": f"bench incident {n}"})
        wait_settled(here.db_path, 120, quiet=1.0)
        load_start = clock.now()

        def change(n: int) -> None:
            incident = n % args.incidents + 1
            incidents.update(db, clock, "bench", str(incident), {"title": f"change {n}"})

        changes, achieved = paced(args.rate, args.duration, change)
        wait_settled(here.db_path, 120)
        left = scalar(here.db_path, "SELECT count(*) FROM outbox WHERE state != 'done'")
        samples: dict[str, list[float]] = {}
        for found in db.query(
            "SELECT i.type, o.created_at, o.done_at FROM outbox o "
            "JOIN integrations i ON i.id = o.integration_id "
            "WHERE o.state = 'done' AND o.created_at >= ?",
            [format_time(load_start)],
        ):
            delay = parse_time(found["done_at"]) - parse_time(found["created_at"])
            samples.setdefault(found["type"], []).append(delay.total_seconds() * 1000)
        db.close()
    everything = [v for values in samples.values() for v in values]
    overall = latencies(everything)
    what = f"propagation platform -> external, p99, {args.rate:g} changes/s for {args.duration:g} s"
    report = {
        "benchmark": "propagation",
        "what": "platform -> external propagation (commit to vendor acknowledgement)",
        "rows": [spec_row(1, what, overall["p99_ms"], "ms", "<", 250)],
        "webhooks": not args.outbound_only,
        "rate_per_s": args.rate,
        "achieved_rate_per_s": round(achieved, 1),
        "duration_s": args.duration,
        "changes": changes,
        "rows_delivered": len(everything),
        "rows_not_delivered": left,
        "p50_ms": overall["p50_ms"],
        "p99_ms": overall["p99_ms"],
        "max_ms": overall["max_ms"],
        "target_p99_ms": 250,
        "by_type": {kind: latencies(values) for kind, values in sorted(samples.items())},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
