# Who may do what in im (SPEC §9). Evaluated in-process by regopy; the query is
# data.im.rbac.decision and its answer is {"allow": bool, "reason": string}.
#
# input:
#   principal  the caller: $IM_USER (CLI) or the API token's owner
#   action     one of the names in `rows` below, e.g. "incident.update"
#   bindings   the caller's role bindings: [{"role": ..., "scope": ...}]
#   target     what the action touches, each part optional:
#              {"integration": NAME, "incident": {"id", "commander", "assigned_to"},
#               "principal": WHOSE}  (tokens and role bindings belong to a principal)
#
# An integration manager's scope is a list of integration names or glob patterns
# ("prod-*"), one per binding. An action on no particular integration (a listing) is
# allowed to a manager; the caller then shows only the items in scope.
package im.rbac

import rego.v1

# Each action belongs to one row of the matrix.
rows := {
	"integration.list": "read",
	"integration.get": "read",
	"integration.sync-status": "read",
	"integration.events": "read",
	"field-ownership.list": "read",
	"field-mapping.list": "read",
	"dlq.list": "read",
	"reconcile.history": "read",
	"reconcile.schedule.show": "read",
	"doctor.run": "read",
	"conflict.list": "read",
	"conflict.show": "read",
	"conflict.resolve": "resolve",
	"integration.configure": "manage",
	"integration.test": "manage",
	"integration.webhook-setup": "manage",
	"integration.rotate-secret": "manage",
	"integration.show-secret": "manage",
	"field-ownership.set": "manage",
	"field-ownership.unset": "manage",
	"field-mapping.set": "manage",
	"field-mapping.unset": "manage",
	"reconcile.run": "manage",
	"reconcile.schedule": "manage",
	"dlq.retry": "manage",
	"dlq.discard": "manage",
	"integration.create": "create-delete",
	"integration.delete": "create-delete",
	"incident.list": "incident-read",
	"incident.show": "incident-read",
	"incident.history": "incident-read",
	"incident.create": "incident-create",
	"incident.update": "incident-update",
	"incident.comment": "incident-update",
	"token.create": "own",
	"token.list": "own",
	"token.revoke": "own",
	"access.list": "own",
	"access.policy.show": "incident-read",
	"access.grant": "admin",
	"access.revoke": "admin",
	"access.policy": "admin",
	"audit.read": "admin",
	"key.rotate": "admin",
	"daemon.run": "admin",
}

row := rows[input.action]

roles contains b.role if some b in input.bindings

administrator if "platform.administrator" in roles

# The manager scopes that cover the target integration (all of them for a listing).
covering contains b.scope if {
	some b in input.bindings
	b.role == "integration.manager"
	covers(b.scope)
}

covers(_) if not input.target.integration

covers(scope) if glob.match(scope, null, input.target.integration)

# The incident is the caller's: it commands it, or the incident is assigned to it.
own_incident := concat("", [who, " commands ", input.target.incident.id]) if {
	input.target.incident.commander == input.principal
} else := concat("", [input.target.incident.id, " is assigned to ", who]) if {
	input.target.incident.assigned_to == input.principal
}

own_principal if input.target.principal == input.principal

own_principal if not input.target.principal

allow(reason) := {"allow": true, "reason": reason}

deny(reason) := {"allow": false, "reason": reason}

# Reasons are joined with concat: the engine's sprintf mangles strings made by concat.
who := input.principal

decision := deny(concat("", [input.action, " is not an action im knows"])) if {
	not row
} else := allow(concat("", [who, " is a platform.administrator"])) if {
	administrator
} else := allow(concat("", [who, " acts on its own behalf"])) if {
	row == "own"
	own_principal
} else := allow(concat("", [who, " manages ", concat(", ", sort(covering)), " (integration.manager)"])) if {
	row in {"read", "resolve", "manage", "create-delete"}
	count(covering) > 0
} else := allow(concat("", [who, " is a viewer, who may read"])) if {
	row in {"read", "incident-read"}
	"viewer" in roles
} else := allow(concat("", [who, " is an incident_commander, who may read"])) if {
	row in {"read", "incident-read"}
	"incident_commander" in roles
} else := allow(concat("", [who, " is an integration.manager, who may read incidents"])) if {
	row == "incident-read"
	"integration.manager" in roles
} else := allow(concat("", [who, " is an incident_commander"])) if {
	row == "incident-create"
	"incident_commander" in roles
} else := allow(concat("", [own_incident, " (incident_commander)"])) if {
	row in {"resolve", "incident-update"}
	"incident_commander" in roles
	own_incident
} else := deny(concat("", [who, " has no role; an administrator can grant one with `im access grant ", who, " --role viewer`"])) if {
	count(roles) == 0
} else := deny(concat("", [who, " (", concat(", ", sort(roles)), ") may not ", input.action, on_target]))

on_target := concat("", [" on ", input.target.incident.id]) if {
	input.target.incident
} else := concat("", [" on ", input.target.integration]) if {
	input.target.integration
} else := concat("", [" for ", input.target.principal]) if {
	input.target.principal
} else := ""
