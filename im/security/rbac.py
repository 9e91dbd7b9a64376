"""RBAC decisions (SPEC §9): a Rego policy evaluated in-process by regopy.

The policy is compiled once per process into a bundle and queried by entrypoint for each
decision (about 0.1 ms); the caller's role bindings travel in ``input``, not in ``data``, so a
decision costs the same whatever the number of users. The answer is
``{"allow": bool, "reason": string}``; anything else, or no answer, is a denial.

Two defects of the engine shape this module (measured on regopy 1.5.2): the answer's JSON
does not escape quotes that come from ``input``, so every string we pass in is checked
against a plain character set first (``check_term``); and a rule evaluated ``with input as``
another document crashes the process, so the policy's tests are cases of inputs and expected
answers, run here (``run_cases``), not Rego ``test_`` rules.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from im.errors import ImError, UsageError

ENTRYPOINT = "im/rbac/decision"
CASES_QUERY = "cases := data.im.rbac_test.cases"
BUILTIN = "rbac.rego"
BUILTIN_CASES = "rbac_test.rego"
# Names that reach the policy: principals, actions, integration names, incident ids.
_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+*?\-]{0,199}")


class PolicyError(ImError):
    """A policy that does not compile or does not answer as the product needs."""


@dataclass(frozen=True)
class Decision:
    allow: bool
    reason: str


def check_term(what: str, value: str) -> str:
    """``value`` if it may be passed to the policy. Raises UsageError otherwise."""
    if not _TERM.fullmatch(value):
        raise UsageError(
            f"{what} {value[:60]!r} is not valid",
            "use letters, digits and . _ @ + - (starting with a letter or digit)",
        )
    return value


@cache
def shipped(name: str = BUILTIN) -> str:
    """The text of a policy file that ships with the package."""
    return resources.files("im.security.policies").joinpath(name).read_text(encoding="utf-8")


# The engine prints to file descriptor 1, which belongs to the whole process: one capture at
# a time, and never while a request thread could be compiling too.
_ENGINE_OUTPUT = threading.RLock()
# Rego features the engine mishandles: `with` crashes the process (NOTES.md), `print`
# writes to stdout where data goes.
_UNSUPPORTED = re.compile(r"\bwith\b|\bprint\s*\(")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`')


def check_supported(source: str, name: str) -> str:
    """``source`` unless it uses what the engine cannot run safely. Raises PolicyError."""
    for number, line in enumerate(source.splitlines(), start=1):
        code = _STRING.sub('""', line).split("#", 1)[0]  # not in strings, not in comments
        found = _UNSUPPORTED.search(code)
        if found:
            raise PolicyError(
                f"{name}:{number} uses `{found.group(0).rstrip('( ')}`, which im's Rego engine "
                "does not support (regopy 1.5 crashes on `with`; `print` would write into "
                "the output)",
                "rewrite it without them",
            )
    return source


def read_source(path: Path) -> str:
    """A policy or cases file's text. Raises UsageError when it is not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path.name} is not UTF-8 text", "give a .rego file") from None


@contextmanager
def _engine_output() -> Iterator[list[str]]:
    """Capture what the engine prints on file descriptor 1 (its compile errors), so stdout
    stays data; the captured text is handed to the caller."""
    with _ENGINE_OUTPUT:
        yield from _captured()


def _captured() -> Iterator[list[str]]:
    sys.stdout.flush()
    captured: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(1)
        os.dup2(sink.fileno(), 1)
        try:
            yield captured
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read(64_000).decode("utf-8", "replace"))


def _first_error(printed: str, fallback: str) -> str:
    """The first message and place of the engine's error listing, on one line."""
    lines = [line.strip() for line in printed.splitlines() if line.strip()]
    if "Errors:" in lines and lines.index("Errors:") + 1 < len(lines):
        at = lines.index("Errors:") + 1
        place = lines[at + 1][3:] if at + 1 < len(lines) and lines[at + 1].startswith("-- ") else ""
        return f"{lines[at]} ({place})" if place else lines[at]
    return " ".join(fallback.split())[:200]


class Policy:
    """One compiled policy. Thread-safe: the daemon's request threads share it."""

    def __init__(self, source: str, name: str = BUILTIN) -> None:
        import regopy

        self.name = name
        self.source = source
        self._lock = threading.Lock()
        self._rego = regopy.Interpreter()
        with _engine_output() as printed:
            try:
                self._rego.add_module(name, source)
                self._bundle = self._rego.build(None, [ENTRYPOINT])
                error = ""
            except regopy.RegoError as exc:
                error = str(exc)
        if error:
            raise PolicyError(
                f"the policy {name} does not compile: {_first_error(printed[0], error)}",
                "fix it, or go back to the shipped one with `im access policy use --builtin`",
            )

    def decide(self, request: Mapping[str, Any]) -> Decision:
        """The policy's answer to ``request`` (see ``request``). Never raises: a policy that
        fails to answer denies, and says so."""
        import regopy

        with self._lock:
            try:
                self._rego.set_input(dict(request))
                # the output must stay referenced while it is read (the engine frees it)
                output = self._rego.query_bundle_entrypoint(self._bundle, ENTRYPOINT)
                text = str(output) if output.ok() else ""
                # an undefined entrypoint answers the bare word; reading it further aborts
                answer = json.loads(text).get("expressions") if text.startswith("{") else None
            except (regopy.RegoError, ValueError) as exc:
                return Decision(
                    False, f"the policy {self.name} failed: {' '.join(str(exc).split())[:160]}"
                )
        if isinstance(answer, list) and answer:
            answer = answer[0]
        if (
            isinstance(answer, dict)
            and isinstance(answer.get("allow"), bool)
            and isinstance(answer.get("reason"), str)
        ):
            return Decision(answer["allow"], answer["reason"])
        return Decision(
            False, f"the policy {self.name} gave no decision ({ENTRYPOINT} is undefined)"
        )


_COMPILED: dict[tuple[str, str], Policy] = {}


def compiled(source: str, name: str = BUILTIN) -> Policy:
    """The policy compiled from ``source``, once per process (and once across threads)."""
    with _ENGINE_OUTPUT:
        found = _COMPILED.get((source, name))
        if found is None:
            if source != shipped():
                check_supported(source, name)
            found = _COMPILED[(source, name)] = Policy(source, name)
            while len(_COMPILED) > 4:  # a few policies are tested, one is in force
                del _COMPILED[next(iter(_COMPILED))]
        return found


def request(
    principal: str,
    action: str,
    bindings: Sequence[Mapping[str, str]],
    target: Mapping[str, Any],
) -> dict[str, Any]:
    """The policy's input document. Every name in it must have passed ``check_term``."""
    return {
        "principal": principal,
        "action": action,
        "bindings": [{"role": b["role"], "scope": b["scope"]} for b in bindings],
        "target": dict(target),
    }


@dataclass(frozen=True)
class CaseResult:
    name: str
    expected: bool
    decision: Decision
    reason_expected: str

    @property
    def passed(self) -> bool:
        return self.decision.allow == self.expected and (
            not self.reason_expected or self.reason_expected == self.decision.reason
        )


def cases(source: str | None = None) -> list[dict[str, Any]]:
    """The cases of a test file (package im.rbac_test, ``cases := [...]``): each has a
    name, an input, the expected ``allow`` and optionally the exact ``reason``."""
    import regopy

    text = shipped(BUILTIN_CASES) if source is None else check_supported(source, "the cases")
    rego = regopy.Interpreter()
    with _engine_output() as printed:
        try:
            rego.add_module(BUILTIN_CASES, text)
            output = rego.query(CASES_QUERY)
            found = json.loads(output.binding("cases").json()) if output.ok() else None
        except (regopy.RegoError, ValueError) as exc:
            found = None
            printed.append(str(exc))
    if not isinstance(found, list):
        raise PolicyError(
            f"the policy tests do not load: {_first_error(''.join(printed), 'no cases')}"
        )
    for number, case in enumerate(found, start=1):
        if not (
            isinstance(case, dict)
            and isinstance(case.get("name"), str)
            and isinstance(case.get("allow"), bool)
            and isinstance(case.get("input"), dict)
            and isinstance(case.get("reason", ""), str)
        ):
            raise PolicyError(
                f"case {number} of the cases is not "
                '{"name": string, "input": object, "allow": bool, "reason": string (optional)}'
            )
    return found


def run_cases(policy: Policy, tests: Sequence[Mapping[str, Any]]) -> list[CaseResult]:
    """Each case decided by ``policy``."""
    return [
        CaseResult(
            str(case["name"]),
            bool(case["allow"]),
            policy.decide(case["input"]),
            str(case.get("reason", "")),
        )
        for case in tests
    ]
