"""Local simulators of the vendors' APIs (ServiceNow, Jira, PagerDuty): ASGI apps that tests
run in-process and ``im sim`` serves. Nothing outside this package knows about them."""
