"""The README is run, command by command (in the spirit of sqlite-utils' test_docs.py).

Every `im ...` line of its shell blocks is parsed against the real command tree (so a renamed
option or command fails here), and the README is then played in order against the
simulators, as a reader would type it: each command must succeed, except the few listed with
the status they are documented to give. Commands that run until stopped (the daemon, the
simulators, the demo, the TUI) are run by their own tests, named below.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import pytest

from im.cli import cli
from im.clock import FrozenClock
from im.security import rbac
from im.sim.core import Simulator
from im.sim.jira import DEFAULT_USERS as JIRA_USERS
from im.sim.jira import JiraSimulator, JiraUser
from im.sim.pagerduty import DEFAULT_USERS as PD_USERS
from im.sim.pagerduty import PagerDutySimulator
from im.sim.servicenow import ServiceNowSimulator
from tests.conftest import Im
from tests.two_way import Two, platform

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()

# Commands that run until stopped, and the tests that run them.
LONG_RUNNING = {
    "daemon": "tests/test_daemon.py",
    "sim": "tests/test_sim_cli.py",
    "demo": "tests/test_demo.py",
    "conflict review": "tests/test_tui.py",
}
# What a command's output is documented to say, where the README tells it.
SAYS = {
    "integration create prod-snow": "password taken from $IM_PASSWORD",
    "access policy test": "of {n} cases pass",
    "integration reconcile prod-snow --dry-run": "dry-run",
    "integration get prod-snow": "secrets.password",  # shown as set or not set, never itself
    "access policy test incident.update": "carol (incident_commander) may not incident.update",
}
# The status a command is documented to give in the README's story, when not 0.
EXPECTED_STATUS = {
    "doctor": 1,  # no daemon runs in this story: doctor FAILs that check, as documented
}


@dataclass(frozen=True)
class Command:
    line: str
    argv: list[str]

    @property
    def path(self) -> str:
        return " ".join(a for a in self.argv if not a.startswith("-"))


def _blocks(text: str) -> Iterator[list[str]]:
    block: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            if block is not None:
                yield block
                block = None
            elif line.strip() == "```sh":
                block = []
            continue
        if block is not None:
            block.append(line)


def _logical(lines: list[str]) -> Iterator[str]:
    joined = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            joined += line.rstrip()[:-1] + " "
            continue
        yield joined + line
        joined = ""


_SEPARATORS = {"&", "&&", "|", ";", "2>&1"}


def _im_argv(shell: str) -> list[str] | None:
    """The arguments of the `im` command in one shell command, or None when it runs none.
    `im` counts as the command word: first, after VAR=value assignments, after a cron
    schedule, or as a path ending in /im."""
    try:
        words = shlex.split(shell, comments=True)
    except ValueError:
        return None
    for at, word in enumerate(words):
        starts = all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*|[0-9*/,-]+", w) for w in words[:at])
        if word.endswith("/im") or (word == "im" and starts):
            argv = []
            for arg in words[at + 1 :]:
                if arg in _SEPARATORS or arg.startswith((">", "<")):
                    break
                argv.append(arg)
            return argv
        if word in _SEPARATORS:
            return _im_argv(" ".join(shlex.quote(w) for w in words[at + 1 :]))
    return None


def readme_commands() -> list[Command]:
    found = []
    for block in _blocks(README):
        for line in _logical(block):
            for shell in [*re.findall(r"\$\(([^()]*)\)", line), re.sub(r"\$\([^()]*\)", "", line)]:
                argv = _im_argv(shell)
                if argv:
                    found.append(Command(line.strip(), argv))
    return found


def _leaf(argv: list[str]) -> tuple[click.Command, list[str], click.Context]:
    """Parse ``argv`` down to its command and build that command's context: every option
    and value is checked, nothing runs."""
    ctx = cli.make_context("im", list(argv), resilient_parsing=False)
    command: click.Command = cli
    rest = [*ctx._protected_args, *ctx.args]
    while isinstance(command, click.Group):
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        command = sub
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
    return command, rest, ctx


def test_the_quick_start_holds_two_one_line_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = list(_blocks(quick))
    assert len(block) == 2
    assert block[0].endswith("&& .venv/bin/im demo")  # the demo, on the built-in simulators
    assert "pytest" in block[1]
    assert "sed -n 2p" in (ROOT / ".ci" / "run").read_text()  # CI runs line 2 verbatim


def test_the_readme_has_every_command_group() -> None:
    paths = {c.argv[0] for c in readme_commands()}
    assert set(cli.commands) - paths == set()  # every top-level command appears


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: " ".join(c.argv)[:60])
def test_every_readme_command_parses(
    command: Command, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("cert.pem", "key.pem", "mine.rego"):  # the files the README's reader has
        (tmp_path / name).write_text("")
    leaf, rest, _ = _leaf(command.argv)
    assert rest == [], f"{command.line}: unused arguments {rest}"
    assert leaf.callback is not None


def test_long_running_commands_are_run_by_their_own_tests() -> None:
    for command in readme_commands():
        words = " ".join(command.argv[:2])
        owner = next((f for k, f in LONG_RUNNING.items() if words.startswith(k)), None)
        if owner:
            assert (ROOT / owner).exists(), f"{command.line}: {owner} is missing"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shell_completion_as_the_readme_sets_it_up(shell: str) -> None:
    assert f"_IM_COMPLETE={shell}_source im" in README
    im = Path(sys.executable).parent / "im"
    done = subprocess.run(
        [str(im)], env={"_IM_COMPLETE": f"{shell}_source", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0 and "_IM_COMPLETE" in done.stdout
    words = subprocess.run(
        [str(im)],
        env={"_IM_COMPLETE": "bash_complete", "COMP_WORDS": "im integration rec", "COMP_CWORD": "2",
             "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "reconcile" in words.stdout


# -- the README, played in order ------------------------------------------------------------------

PASSWORD = "im-integration"  # the simulator's account, as `im sim servicenow` has it
JIRA_TOKEN = "readme-jira-token"
PD_TOKEN = "readme-pd-token"
WEBHOOK_SECRET = "whsec_cmVhZG1lLXdlYmhvb2stc2VjcmV0"


@dataclass
class Story:
    """The README's reader's world: the simulators (by type) behind its integrations, the
    daemon's parts stepped by hand (tests/two_way.py), and the ids the story made."""

    world: Two
    ids: dict[str, str]

    @property
    def im(self) -> Im:
        return self.world.im

    def sync(self) -> None:
        self.world.sync()

    def snow(self) -> Simulator:
        return self.world.sims["servicenow"]


def _conflicts(story: Story) -> None:
    """Before `im conflict list`: a simultaneous edit in ServiceNow within the window."""
    story.im.ok("incident", "update", "INC-1", "--title", "platform title")
    story.im.clock.advance(1)
    agent = httpx.Client(transport=story.snow().transport(), base_url="http://s",
                         auth=("agent", "agent"))  # fmt: skip
    with agent:
        answer = agent.patch(f"/api/now/table/incident/{story.world.external_id('prod-snow', 1)}",
                             json={"short_description": "agent title"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    story.sync()
    (conflict,) = json.loads(story.im.ok("conflict", "list", "--format", "json"))
    assert conflict["id"] == "conflict-1"  # the id the README shows


def _dead_letters(story: Story) -> None:
    """Before `im integration dlq`: ServiceNow refuses two updates (a 422 goes to the DLQ at
    once), then is fixed."""
    story.snow().faults.permanent_error = 422
    story.im.ok("incident", "update", "INC-1", "--severity", "sev2")
    story.sync()
    story.im.ok("incident", "create", "--title", "Disk full")
    story.sync()
    story.im.ok("incident", "update", "INC-2", "--severity", "sev2")
    story.sync()
    entries = json.loads(story.im.ok("integration", "dlq", "prod-snow", "--format", "json"))
    # DLQ ids depend on everything sent before: the README shows them as examples
    story.ids["entry-123"], story.ids["entry-456"] = entries[0]["id"], entries[-1]["id"]
    story.snow().faults.permanent_error = 0


# Before the first command whose path starts so, the world moves on.
BEFORE: dict[str, Callable[[Story], None]] = {
    "conflict list": _conflicts,
    "integration dlq prod-snow": _dead_letters,
}


@pytest.fixture
def story(im: Im, clock: FrozenClock, tmp_path: Path) -> Iterator[Story]:
    im.ok("init")
    sims: dict[str, Simulator] = {
        "servicenow": ServiceNowSimulator(
            clock=clock,
            webhook_url="http://im/webhooks/prod-snow", webhook_secret=WEBHOOK_SECRET,
        ),
        "jira": JiraSimulator(
            clock=clock,
            users=[*JIRA_USERS, JiraUser("im@acme.com", "im", "app", JIRA_TOKEN)],
        ),
        "pagerduty": PagerDutySimulator(
            clock=clock, tokens={PD_TOKEN: "im@acme.com", "agent-token": "agent@example.com"},
            users=[*PD_USERS, {"email": "im@acme.com", "name": "im"}],
        ),
    }  # fmt: skip

    def transport_for(integration: dict[str, Any]) -> httpx.BaseTransport:
        return sims[integration["type"]].transport()

    with platform(im, clock, sims, transport_for) as world:
        yield Story(world, {})


def test_the_readme_runs_as_written(story: Story, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".secrets").mkdir(parents=True)
    (home / ".secrets" / "jira-token").write_text(JIRA_TOKEN + "\n")
    (tmp_path / "snow-password").write_text("im-integration\n")
    (tmp_path / "mine.rego").write_text((ROOT / "im/security/policies/rbac.rego").read_text())
    places = {
        "~/.secrets/jira-token": str(home / ".secrets" / "jira-token"),
        "/tmp/snow-password": str(tmp_path / "snow-password"),
        "mine.rego": str(tmp_path / "mine.rego"),
        "/path/to/im.db": str(story.im.db_path),
    }
    env = {
        "HOME": str(home),
        "IM_PASSWORD": PASSWORD,
        "IM_API_TOKEN": PD_TOKEN,
        "IM_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    ran, before = 0, dict(BEFORE)
    for command in readme_commands():
        if any(" ".join(command.argv).startswith(k) for k in LONG_RUNNING):
            continue
        for start, step in list(before.items()):
            if " ".join(command.argv).startswith(start):
                step(story)
                del before[start]
        argv = [story.ids.get(a, places.get(a, a)) for a in command.argv]
        stdin = "readme-pd-new-secret\n" if "-" in argv and "--new-secret" in argv else None
        done = story.im(*argv, input=stdin, env=env)
        wanted = EXPECTED_STATUS.get(" ".join(command.argv), 0)
        assert done.exit_code == wanted, f"{command.line}\n-> {done.exit_code}: {done.stderr}"
        said = SAYS.get(" ".join(command.argv[:4])) or SAYS.get(" ".join(command.argv[:3]))
        if said:
            cases = len(rbac.cases())
            assert said.format(n=cases) in done.stdout + done.stderr, (command.line, done)
        assert "internal error" not in done.stderr
        if command.argv[:2] == ["incident", "create"] or command.argv[:1] == ["integration"]:
            story.sync()  # the daemon's part
        ran += 1
    assert ran > 60
