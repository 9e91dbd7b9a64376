"""``im daemon``: the long-running service. ``service`` holds the lock, the heartbeat and the
lifecycle; ``scheduler`` ticks the dispatcher with APScheduler; ``app`` is the ASGI app
(health checks now; webhooks, the REST API and /metrics join it)."""
