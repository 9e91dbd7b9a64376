"""``im access ...``: role bindings and the Rego policy that decides with them."""

from __future__ import annotations

from pathlib import Path

import click

from im.cli.context import app
from im.cli.output import emit_object, emit_rows, format_option, note
from im.model import Role

ROLES = [r.value for r in Role]
BINDING_COLUMNS = ("principal", "role", "scope", "granted_by", "granted_at")
CASE_COLUMNS = ("result", "name", "expected", "decision", "reason")


@click.group()
def access() -> None:
    """Who may do what: role bindings, decided by a Rego policy (SPEC §9).

    Roles: platform.administrator (everything), integration.manager (integrations in its
    scope), incident_commander (incidents it commands or is assigned; read everything),
    viewer (read only). The CLI acts as $IM_USER or the login name, the API as the owner of
    its bearer token.
    """


@access.command()
@click.argument("principal")
@click.option("--role", required=True, type=click.Choice(ROLES), help="The role to grant.")
@click.option(
    "--scope",
    default="",
    metavar="PATTERN",
    help="integration.manager only: an integration name or glob pattern, e.g. 'prod-*'.",
)
def grant(principal: str, role: str, scope: str) -> None:
    """Grant PRINCIPAL a role (administrators only). Grant several scopes one at a time."""
    from im import access as service

    ctx = app()
    ctx.authorize("access.grant", principal=principal)
    made = service.grant(ctx.db, ctx.clock, ctx.principal, principal, role, scope)
    where = f" for {scope}" if scope else ""
    click.echo(
        f"granted {role}{where} to {principal}"
        if made
        else f"{principal} holds {role}{where} already"
    )


@access.command()
@click.argument("principal")
@click.option("--role", required=True, type=click.Choice(ROLES), help="The role to take away.")
@click.option(
    "--scope", default="", metavar="PATTERN", help="integration.manager only: the scope granted."
)
def revoke(principal: str, role: str, scope: str) -> None:
    """Take a role away from PRINCIPAL (administrators only; never the last administrator)."""
    from im import access as service

    ctx = app()
    ctx.authorize("access.revoke", principal=principal)
    service.revoke(ctx.db, principal, role, scope)
    click.echo(f"revoked {role}{f' for {scope}' if scope else ''} from {principal}")


@access.command("list")
@click.option("--principal", metavar="NAME", help="Only this principal's bindings.")
@format_option
def list_(principal: str | None, fmt: str) -> None:
    """List role bindings. Administrators see everyone's; others see their own."""
    from im.store import principals

    ctx = app()
    ctx.authorize("access.list", principal=principal or ctx.principal)
    rows = [
        b
        for b in principals.bindings(ctx.db)
        if (principal is None or b["principal"] == principal)
        and ctx.access.allows("access.list", principal=b["principal"])
    ]
    emit_rows(rows, BINDING_COLUMNS, fmt)


@access.group()
def policy() -> None:
    """The Rego policy in force: show it, test it, replace it."""


@policy.command()
def show() -> None:
    """Print the policy in force (the shipped one unless `im access policy use` replaced it)."""
    from im import access as service

    ctx = app()
    ctx.authorize("access.policy.show")
    name, source = service.policy_source(ctx.db)
    note(f"# {name}")
    click.echo(source, nl=not source.endswith("\n"))


@policy.command()
@click.argument("action", required=False)
@click.option(
    "--as",
    "principal",
    metavar="PRINCIPAL",
    help="With ACTION: decide for this principal, with its role bindings (default: you).",
)
@click.option("--integration", metavar="NAME", help="With ACTION: the integration it touches.")
@click.option("--incident", metavar="INC-n", help="With ACTION: the incident it touches.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Test this policy file instead of the one in force.",
)
@click.option(
    "--cases",
    "cases_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Without ACTION: run these cases (package im.rbac_test) instead of the shipped ones.",
)
@format_option
def test(
    action: str | None,
    principal: str | None,
    integration: str | None,
    incident: str | None,
    policy_file: Path | None,
    cases_file: Path | None,
    fmt: str,
) -> None:
    """Decide ACTION for a principal, or, without ACTION, run the policy's test cases.

    With ACTION (e.g. incident.update) it prints the decision and its reason, using the
    principal's real role bindings and the incident's real commander and assignee. Without
    it, it runs the shipped cases (SPEC §9's matrix, cell by cell) against the policy, so a
    changed policy shows every decision it changes; it exits 1 when any case fails.
    """
    from im import access as service
    from im.security import rbac

    ctx = app()
    ctx.authorize("access.policy.show")
    if policy_file is not None:
        chosen = rbac.compiled(rbac.read_source(policy_file), policy_file.name)
    else:
        chosen = service.policy(ctx.db)
    if action is not None:
        who = principal or ctx.principal
        ctx.authorize("access.list", principal=who)
        target = ctx.access.target(integration=integration, incident=incident)
        decision = service.decide(ctx.db, who, action, target, chosen)
        emit_object(
            {
                "principal": who,
                "action": action,
                "decision": "allow" if decision.allow else "deny",
                "reason": decision.reason,
            },
            fmt,
        )
        return
    if principal or integration or incident:
        raise click.UsageError("--as, --integration and --incident go with an ACTION")
    tests = rbac.cases(rbac.read_source(cases_file) if cases_file else None)
    results = rbac.run_cases(chosen, tests)
    failed = [r for r in results if not r.passed]
    rows = [
        {
            "result": "pass" if r.passed else "FAIL",
            "name": r.name,
            "expected": "allow" if r.expected else "deny",
            "decision": "allow" if r.decision.allow else "deny",
            "reason": r.decision.reason,
        }
        for r in (results if fmt != "table" else failed)
    ]
    if rows:
        emit_rows(rows, CASE_COLUMNS, fmt)
    note(f"{chosen.name}: {len(results) - len(failed)} of {len(results)} cases pass")
    if failed:
        click.get_current_context().exit(1)


@policy.command()
@click.argument(
    "policy_file",
    required=False,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--builtin", is_flag=True, help="Go back to the policy shipped with im.")
def use(policy_file: Path | None, builtin: bool) -> None:
    """Make POLICY_FILE the policy in force for every process using this database
    (administrators only). Its text is stored in the database.

    The file must define data.im.rbac.decision as {"allow": bool, "reason": string} and
    must still let you change the policy. Run `im access policy test --policy FILE` first
    to see which decisions it changes.
    """
    from im import access as service
    from im.security import rbac

    if builtin == (policy_file is not None):
        raise click.UsageError("give either POLICY_FILE or --builtin")
    ctx = app()
    ctx.authorize("access.policy", detail=policy_file.name if policy_file else "builtin")
    source = rbac.read_source(policy_file) if policy_file else None
    chosen = service.use_policy(
        ctx.db, ctx.principal, source, policy_file.name if policy_file else "rbac.rego"
    )
    click.echo(f"the policy in force is now {chosen.name}")
