"""APScheduler ticks: in the engine process, the dispatcher about every 100 ms (and at once
on a wake-up), the reconcile schedules every second and the dedupe purge hourly (the inbound
applier runs on its own thread, woken by each stored delivery and at least every tick); in
the daemon's own process, the heartbeat every second. The outbox row's
``next_attempt_at`` (and the stored event's, and a schedule's ``next_run_at``) is the only
source of truth: there is no job per row or per schedule, so a restart loses nothing and a
changed schedule needs no restart."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from apscheduler.schedulers.background import BackgroundScheduler

TICK_SECONDS = 0.1
SCHEDULE_SECONDS = 1.0  # reconcile schedules are read from the database this often


def start(jobs: Mapping[str, tuple[Callable[[], object], float]]) -> BackgroundScheduler:
    """Run each job every so many seconds, never two runs of one job at once."""
    scheduler = BackgroundScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        executors={"default": {"type": "threadpool", "max_workers": len(jobs)}},
    )
    for name, (job, seconds) in jobs.items():
        scheduler.add_job(job, "interval", seconds=seconds, id=name)
    scheduler.start()
    return scheduler
