"""APScheduler ticks: the dispatcher about every 100 ms, the heartbeat every second. The
outbox row's ``next_attempt_at`` is the only source of truth for retries: there is no job per
row, so a restart loses nothing."""

from __future__ import annotations

from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler

DISPATCH_SECONDS = 0.1


def start(
    dispatch: Callable[[], object], heartbeat: Callable[[], object], beat_seconds: float
) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        executors={"default": {"type": "threadpool", "max_workers": 2}},
    )
    scheduler.add_job(dispatch, "interval", seconds=DISPATCH_SECONDS, id="dispatch")
    scheduler.add_job(heartbeat, "interval", seconds=beat_seconds, id="heartbeat")
    scheduler.start()
    return scheduler
