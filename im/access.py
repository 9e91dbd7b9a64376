"""Access control and its audit log (SPEC §9), shared by the CLI, the API and the TUI.

Every front end asks ``Access.require`` before it acts: the Rego policy in force decides from
the caller's role bindings and what the action touches. A denial is written to the audit
log and raised; an allowed mutation is written before it runs and marked ``ok`` or
``failed`` when it ends (``Access.finish``), so the log also shows changes that were cut
short. Reads that are allowed are not logged.

The CLI acts as ``$IM_USER`` or the login name: its checks protect against mistakes, not
against someone who can read the database file (the file's 0600 mode is that boundary).
The API acts as its bearer token's owner, which a caller cannot choose: that is the
enforced boundary.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from im.clock import Clock, format_time
from im.errors import ImError, NotFoundError, StateError, UsageError
from im.model import Role
from im.security import rbac
from im.store import audit, meta, principals
from im.store.db import write

POLICY_KEY = "policy"  # meta: the text of a policy that replaced the shipped one
POLICY_NAME_KEY = "policy_name"

# Actions that change something (or show a secret): audited when allowed as well as when
# denied.
AUDITED = frozenset(
    {
        "integration.show-secret",
        "conflict.resolve",
        "integration.configure",
        "integration.test",  # a passing test lifts a credentials pause
        "integration.rotate-secret",
        "field-ownership.set",
        "field-ownership.unset",
        "field-mapping.set",
        "field-mapping.unset",
        "reconcile.run",
        "reconcile.schedule",
        "dlq.retry",
        "dlq.discard",
        "integration.create",
        "integration.delete",
        "incident.create",
        "incident.update",
        "incident.comment",
        "token.create",
        "token.revoke",
        "access.grant",
        "access.revoke",
        "access.policy",
        "key.rotate",
    }
)


class ForbiddenError(ImError):
    """The policy denied the action. The message is the policy's reason."""


def policy(db: Database) -> rbac.Policy:
    """The policy in force: the one `im access policy use` stored, else the shipped one."""
    source = meta.get(db, POLICY_KEY)
    if source is None:
        return rbac.compiled(rbac.shipped())
    return rbac.compiled(source, meta.get(db, POLICY_NAME_KEY) or "custom.rego")


def decide(
    db: Database,
    principal: str,
    action: str,
    target: Mapping[str, Any],
    chosen: rbac.Policy | None = None,
) -> rbac.Decision:
    """The decision of ``chosen`` (default: the policy in force) for ``principal``, with
    its role bindings, doing ``action`` on ``target`` (see Access.target)."""
    rbac.check_term("the principal", principal)
    rbac.check_term("the action", action)
    bindings = principals.bindings_of(db, principal)
    return (chosen or policy(db)).decide(rbac.request(principal, action, bindings, target))


def _person(value: str | None) -> str | None:
    """An incident's commander or assignee as the policy sees it: only a value that could be
    a principal's name is passed (a free-text name like "Jane Doe" can match nobody)."""
    if value is None:
        return None
    try:
        return rbac.check_term("a person", value)
    except UsageError:
        return None


@dataclass
class Access:
    """One caller's access: ``principal`` acting through ``via`` (cli, api, tui)."""

    db: Database
    clock: Clock
    principal: str
    via: str
    _open: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        rbac.check_term("the principal", self.principal)

    def target(
        self,
        *,
        creating: bool = False,
        integration: str | None = None,
        incident: str | int | None = None,
        principal: str | None = None,
        conflict: str | None = None,
    ) -> dict[str, Any]:
        """What the policy is told an action touches. An integration or incident that
        exists is looked up (by name or id; a commander's rights depend on the incident);
        one that does not is passed by name (for `create`), or raises NotFoundError naming
        only what the caller may see."""
        from im.config import integrations
        from im.incidents import get as get_incident
        from im.store import integrations as integration_rows

        found: dict[str, Any] = {}
        if conflict is not None:
            from im.sync import conflicts

            disputed = conflicts.get(self.db, conflict)
            integration = str(disputed["integration_id"])
            incident = int(disputed["incident_id"])
        if integration is not None:
            known = integration_rows.find(self.db, integration)
            if known is None and creating:
                found["integration"] = rbac.check_term("the integration name", integration.strip())
            elif known is None:
                # an unknown name's "did you mean" names only integrations the caller may see
                shown = self.visible("integration.get")
                found["integration"] = integrations.find(self.db, integration, shown)["name"]
            else:
                found["integration"] = known["name"]
        if incident is not None:
            row_incident = get_incident(self.db, incident)
            found["incident"] = {
                "id": row_incident.display_id,
                "commander": _person(row_incident.commander),
                "assigned_to": _person(row_incident.assigned_to),
            }
        if principal is not None:
            # a stored principal from before names were checked is nobody's own
            found["principal"] = _person(principal) or "?"
        return found

    def decide(self, action: str, target: Mapping[str, Any]) -> rbac.Decision:
        return decide(self.db, self.principal, action, target)

    def allows(self, action: str, **target: Any) -> bool:
        """Whether the caller may ``action`` on ``target``, without logging: for showing
        only the items of a listing that the caller may see."""
        return self.decide(action, self.target(**target)).allow

    def visible(self, action: str) -> set[str]:
        """The integrations the caller may ``action`` (a read): what a listing shows."""
        from im.store import integrations

        return {
            name
            for name in integrations.names(self.db)
            if self.decide(action, {"integration": name}).allow
        }

    def require(self, action: str, *, detail: str = "", **target: Any) -> rbac.Decision:
        """Ask the policy; raise ForbiddenError (logged) when it denies. An allowed
        mutation is logged now and completed by ``finish``."""
        where = self.target(creating=action == "integration.create", **target)
        decision = self.decide(action, where)
        label = detail or _label(where)
        if not decision.allow:
            self._log(action, label, decision, outcome="denied")
            raise ForbiddenError(
                f"access denied: {decision.reason}",
                "ask a platform.administrator; `im access list` shows your roles",
            )
        if action in AUDITED:
            self._open.append(self._log(action, label, decision, outcome=None))
        return decision

    def finish(self, error: str | None) -> None:
        """Mark the mutations this caller started as ended: ``ok``, or ``failed`` with the
        error's one-line text (never a secret: errors carry none)."""
        if not self._open:
            return
        opened, self._open = self._open, []
        with write(self.db):
            for entry in opened:
                audit.finish(
                    self.db,
                    entry,
                    "ok" if error is None else "failed",
                    None if error is None else " ".join(error.split())[:300],
                )

    def _log(self, action: str, label: str, decision: rbac.Decision, *, outcome: str | None) -> int:
        with write(self.db):
            return audit.insert(
                self.db,
                {
                    "at": format_time(self.clock.now()),
                    "principal": self.principal,
                    "via": self.via,
                    "action": action,
                    "target": label,
                    "decision": "allow" if decision.allow else "deny",
                    "reason": decision.reason,
                    "outcome": outcome,
                },
            )


def _label(target: Mapping[str, Any]) -> str:
    parts = []
    if "incident" in target:
        parts.append(f"on {target['incident']['id']}")
    if "integration" in target:
        parts.append(f"{'of' if parts else 'on'} {target['integration']}")
    if "principal" in target:
        parts.append(f"for {target['principal']}")
    return " ".join(parts)


# `im access ...`: role bindings and the policy


def grant(db: Database, clock: Clock, by: str, principal: str, role: str, scope: str) -> bool:
    """Bind ``role`` to ``principal`` (``scope``: integration names or patterns, for
    managers only). False when it was bound already. Writes."""
    rbac.check_term("the principal", principal)
    parsed = _role(role)
    scope = _scope(parsed, scope)
    with write(db):
        return principals.grant(db, principal, parsed, scope, by, format_time(clock.now()))


def revoke(db: Database, principal: str, role: str, scope: str) -> None:
    """Remove a binding. Refuses to remove the last administrator. Writes."""
    parsed = _role(role)
    scope = _scope(parsed, scope)
    with write(db):
        if parsed is Role.ADMINISTRATOR and principals.administrators(db) == [principal]:
            raise StateError(
                f"{principal} is the last platform.administrator",
                "grant the role to someone else first",
            )
        if not principals.revoke(db, principal, parsed, scope):
            held = ", ".join(
                b["role"] + (f" ({b['scope']})" if b["scope"] else "")
                for b in principals.bindings_of(db, principal)
            )
            raise NotFoundError(
                f"{principal} does not hold {parsed.value}" + (f" for {scope}" if scope else ""),
                f"{principal} holds: {held}" if held else f"{principal} holds no role",
            )


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise UsageError(
            f"{role[:60]!r} is not a role", f"roles: {', '.join(r.value for r in Role)}"
        ) from None


def _scope(role: Role, scope: str) -> str:
    if role is Role.INTEGRATION_MANAGER:
        if not scope:
            raise UsageError(
                "an integration.manager needs --scope",
                "give integration names or patterns, e.g. --scope 'prod-*'",
            )
        return rbac.check_term("the scope", scope)
    if scope:
        raise UsageError(f"--scope applies to integration.manager only, not {role.value}")
    return ""


def use_policy(db: Database, principal: str, source: str | None, name: str) -> rbac.Policy:
    """Make ``source`` the policy in force (None: the shipped one again). Writes.

    The new policy must compile and must still let ``principal`` manage the policy, so a
    mistake cannot lock every administrator out. Raises PolicyError, StateError.
    """
    candidate = rbac.compiled(rbac.shipped() if source is None else source, name)
    _check_speed(candidate)
    bound = principals.bindings_of(db, principal)
    verdict = candidate.decide(rbac.request(principal, "access.policy", bound, {}))
    if not verdict.allow:
        raise StateError(
            f"under {name}, {principal} could no longer change the policy: {verdict.reason}",
            "fix the policy so administrators keep access.policy",
        )
    with write(db):
        if source is None:
            db.execute("DELETE FROM meta WHERE key IN (?, ?)", [POLICY_KEY, POLICY_NAME_KEY])
        else:
            meta.put(db, POLICY_KEY, source)
            meta.put(db, POLICY_NAME_KEY, name)
    return candidate


SLOWEST_DECISION = 0.05  # seconds: every API request and CLI command waits for one or more


def _check_speed(candidate: rbac.Policy) -> None:
    """Refuse a policy whose decisions are slow: each one holds up a request (the API's
    threads share the compiled policy). The shipped cases are the sample."""
    slowest = 0.0
    for case in rbac.cases():
        started = time.perf_counter()
        candidate.decide(case["input"])
        slowest = max(slowest, time.perf_counter() - started)
        if slowest > SLOWEST_DECISION:
            raise StateError(
                f"{candidate.name} takes {slowest * 1000:.0f} ms for one decision (at most "
                f"{SLOWEST_DECISION * 1000:.0f} ms)",
                "keep the rules simple: pass data in input rather than computing it",
            )


def policy_source(db: Database) -> tuple[str, str]:
    """The name and text of the policy in force."""
    source = meta.get(db, POLICY_KEY)
    if source is None:
        return rbac.BUILTIN + " (shipped)", rbac.shipped()
    return meta.get(db, POLICY_NAME_KEY) or "custom.rego", source
