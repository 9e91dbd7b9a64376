"""What the benchmarks share: the simulators' integration options and accounts, and running
`im` as its own process. The benchmarks run as scripts (`python benchmarks/NAME.py`), so this
module is imported from their directory."""

from __future__ import annotations

import subprocess
import sys

# `im integration create` options per type, for the simulators' default accounts (SPEC §12)
OPTIONS = {
    "servicenow": ["--username", "im-integration"],
    "jira": ["--email", "im-integration@example.com", "--project", "OPS"],
    "pagerduty": [
        "--from-email", "im-integration@example.com", "--service", "PSVC001",
        "--escalation-policy", "PEP0001",
    ],
}  # fmt: skip
SECRETS = {
    "servicenow": {"IM_PASSWORD": "im-integration"},
    "jira": {"IM_API_TOKEN": "im-integration-token"},
    "pagerduty": {"IM_API_TOKEN": "im-integration-token"},
}


def run_im(env: dict[str, str], *args: str, extra: dict[str, str] | None = None) -> None:
    """`im ARGS` in its own process; raises CalledProcessError when it fails."""
    subprocess.run(
        [sys.executable, "-m", "im", *args],
        env={**env, **(extra or {})},
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
