"""Schema versions. Each capability adds its own migration to the end of this set; a
migration, once released, is never edited."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("im")


def _run(db: Database, script: str) -> None:
    """Run each statement of ``script`` inside the caller's transaction.

    (``executescript`` would first COMMIT it, so a failing migration could leave half a schema.)
    """
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


@MIGRATIONS(name="0001_foundation")
def _foundation(db: Database) -> None:
    _run(
        db,
        """
        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            severity TEXT NOT NULL,
            priority TEXT NOT NULL,
            status TEXT NOT NULL,
            assigned_to TEXT NOT NULL DEFAULT '',
            escalation_policy TEXT NOT NULL DEFAULT '',
            commander TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            created_by TEXT NOT NULL
        );
        CREATE INDEX incidents_status ON incidents(status);
        CREATE TABLE journal_entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('work_notes', 'comments')),
            body TEXT NOT NULL,
            source TEXT NOT NULL,
            actor TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX journal_entries_incident ON journal_entries(incident_id, id);
        CREATE TABLE field_changes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
            field TEXT NOT NULL,
            old_value TEXT,
            new_value TEXT,
            source TEXT NOT NULL,
            actor TEXT NOT NULL,
            changed_at TEXT NOT NULL
        );
        CREATE INDEX field_changes_incident ON field_changes(incident_id, id);
        CREATE TABLE integrations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL CHECK (type IN ('servicenow', 'jira', 'pagerduty')),
            url TEXT NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1,
            direction TEXT NOT NULL DEFAULT 'outbound',
            conflict_strategy TEXT NOT NULL DEFAULT 'last-write-wins',
            conflict_window REAL NOT NULL DEFAULT 5.0,
            rate_limit REAL,
            rate_limit_backoff INTEGER NOT NULL DEFAULT 1,
            ca_bundle TEXT,
            allow_insecure_http INTEGER NOT NULL DEFAULT 0,
            settings TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            created_by TEXT NOT NULL
        );
        CREATE TABLE integration_secrets (
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            sealed BLOB NOT NULL,
            key_id TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (integration_id, name)
        );
        CREATE TABLE field_ownership (
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            field TEXT NOT NULL,
            owner TEXT NOT NULL CHECK (owner IN ('platform', 'external')),
            priority INTEGER NOT NULL DEFAULT 0,
            is_default INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (integration_id, field)
        );
        CREATE TABLE field_mappings (
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            field TEXT NOT NULL,
            external_field TEXT NOT NULL,
            value_map TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (integration_id, field)
        );
        CREATE TABLE links (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            external_id TEXT NOT NULL,
            external_key TEXT,
            state TEXT NOT NULL DEFAULT 'linked',
            created_at TEXT NOT NULL,
            UNIQUE (incident_id, integration_id),
            UNIQUE (integration_id, external_id)
        );
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            operation TEXT NOT NULL CHECK (operation IN ('create', 'update')),
            fields TEXT NOT NULL DEFAULT '{}',
            journal TEXT NOT NULL DEFAULT '[]',
            correlation_key TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            lease_until TEXT,
            last_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
        CREATE INDEX outbox_pair ON outbox(incident_id, integration_id, state);
        CREATE TABLE role_bindings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            principal TEXT NOT NULL,
            role TEXT NOT NULL,
            scope TEXT NOT NULL DEFAULT '',
            granted_by TEXT NOT NULL,
            granted_at TEXT NOT NULL,
            UNIQUE (principal, role, scope)
        );
        """,
    )


@MIGRATIONS(name="0002_dispatch")
def _dispatch(db: Database) -> None:
    _run(
        db,
        """
        ALTER TABLE outbox ADD COLUMN direction TEXT NOT NULL DEFAULT 'outbound';
        ALTER TABLE outbox ADD COLUMN pauses INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN attempt_log TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
        ALTER TABLE outbox ADD COLUMN done_at TEXT;
        ALTER TABLE outbox ADD COLUMN sending_since TEXT;
        CREATE TABLE integration_state (
            integration_id INTEGER PRIMARY KEY REFERENCES integrations(id) ON DELETE CASCADE,
            pause_reason TEXT,
            paused_at TEXT,
            paused_until TEXT,
            next_send_at TEXT,
            last_success_at TEXT,
            last_failure_at TEXT,
            last_error TEXT
        );
        CREATE TABLE counters (
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            value INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (integration_id, name)
        );
        CREATE TABLE sync_snapshots (
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
            field TEXT NOT NULL,
            value TEXT NOT NULL,
            version TEXT,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (integration_id, incident_id, field)
        );
        CREATE TABLE journal_links (
            journal_entry_id INTEGER NOT NULL REFERENCES journal_entries(id) ON DELETE CASCADE,
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            vendor_id TEXT NOT NULL,
            linked_at TEXT NOT NULL,
            PRIMARY KEY (journal_entry_id, integration_id),
            UNIQUE (integration_id, vendor_id)
        );
        CREATE TABLE daemon (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            pid INTEGER NOT NULL,
            hostname TEXT NOT NULL,
            listen TEXT NOT NULL,
            public_url TEXT,
            started_at TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL,
            stopped_at TEXT
        )
        """,
    )


@MIGRATIONS(name="0003_tokens")
def _tokens(db: Database) -> None:
    _run(
        db,
        """
        CREATE TABLE api_tokens (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            principal TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            created_at TEXT NOT NULL,
            created_by TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        );
        CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens(name) WHERE revoked_at IS NULL
        """,
    )


@MIGRATIONS(name="0004_inbound")
def _inbound(db: Database) -> None:
    _run(
        db,
        """
        CREATE TABLE inbound_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            received_at TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            query TEXT NOT NULL DEFAULT '',
            headers TEXT NOT NULL DEFAULT '{}',
            body BLOB NOT NULL,
            state TEXT NOT NULL DEFAULT 'received',
            delivery_id TEXT,
            event_type TEXT,
            external_id TEXT,
            incident_id INTEGER,
            outcome TEXT,
            warnings TEXT NOT NULL DEFAULT '[]',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            attempt_log TEXT NOT NULL DEFAULT '[]',
            applied_at TEXT
        );
        CREATE INDEX inbound_events_due ON inbound_events(state, next_attempt_at);
        CREATE INDEX inbound_events_integration ON inbound_events(integration_id, id);
        CREATE TABLE deliveries (
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            delivery_id TEXT NOT NULL,
            event_id INTEGER NOT NULL,
            seen_at TEXT NOT NULL,
            PRIMARY KEY (integration_id, delivery_id)
        );
        CREATE TABLE pushes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
            field TEXT NOT NULL,
            value TEXT NOT NULL,
            sent_at TEXT NOT NULL,
            acked_at TEXT
        );
        CREATE INDEX pushes_open ON pushes(integration_id, incident_id, field, acked_at)
        """,
    )


@MIGRATIONS(name="0005_conflicts")
def _conflicts(db: Database) -> None:
    _run(
        db,
        """
        CREATE TABLE conflicts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            field TEXT NOT NULL,
            strategy TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'resolved', 'ignored')),
            platform_value TEXT NOT NULL,
            platform_at TEXT NOT NULL,
            platform_actor TEXT NOT NULL,
            external_value TEXT NOT NULL,
            external_at TEXT NOT NULL,
            external_actor TEXT NOT NULL,
            external_version TEXT,
            winner TEXT,
            reason TEXT NOT NULL DEFAULT '',
            detected_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            resolved_at TEXT,
            resolved_by TEXT
        );
        CREATE INDEX conflicts_status ON conflicts(status, integration_id);
        CREATE UNIQUE INDEX conflicts_one_pending ON conflicts(incident_id, integration_id, field)
            WHERE status = 'pending'
        """,
    )


@MIGRATIONS(name="0006_dead_letters")
def _dead_letters(db: Database) -> None:
    # One numbering for the DLQ, whichever way the change was going: entry-<id>.
    _run(
        db,
        """
        CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            direction TEXT NOT NULL CHECK (direction IN ('outbound', 'inbound')),
            outbox_id INTEGER REFERENCES outbox(id) ON DELETE CASCADE,
            event_id INTEGER REFERENCES inbound_events(id) ON DELETE CASCADE,
            state TEXT NOT NULL DEFAULT 'dead',
            created_at TEXT NOT NULL,
            closed_at TEXT
        );
        CREATE INDEX dead_letters_open ON dead_letters(integration_id, state)
        """,
    )


@MIGRATIONS(name="0007_reconcile")
def _reconcile(db: Database) -> None:
    # One row per run, written when it starts (state running) and when it ends, so history
    # shows an interrupted run too; one schedule per integration.
    _run(
        db,
        """
        CREATE TABLE reconcile_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            trigger TEXT NOT NULL CHECK (trigger IN ('manual', 'schedule', 'cron')),
            mode TEXT NOT NULL CHECK (mode IN ('dry-run', 'auto-heal')),
            state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed')),
            pid INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            checked INTEGER NOT NULL DEFAULT 0,
            discrepancies INTEGER NOT NULL DEFAULT 0,
            healed INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            error TEXT
        );
        CREATE INDEX reconcile_runs_integration ON reconcile_runs(integration_id, id);
        CREATE TABLE reconcile_schedules (
            integration_id INTEGER PRIMARY KEY REFERENCES integrations(id) ON DELETE CASCADE,
            interval_seconds INTEGER NOT NULL CHECK (interval_seconds >= 30),
            auto_heal INTEGER NOT NULL,
            enabled INTEGER NOT NULL,
            next_run_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            updated_by TEXT NOT NULL
        )
        """,
    )


@MIGRATIONS(name="0008_drift_times")
def _drift_times(db: Database) -> None:
    # A concurrent edit the dispatcher left in place, with the latest time it can have been
    # made (the record's update time when it was read): reconciliation judges "the later
    # change" by it rather than by the record's newest update, which any other field moves.
    _run(
        db,
        """
        CREATE TABLE external_sightings (
            integration_id INTEGER NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
            incident_id INTEGER NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
            field TEXT NOT NULL,
            value TEXT NOT NULL,
            seen_at TEXT NOT NULL,
            PRIMARY KEY (integration_id, incident_id, field)
        );
        CREATE INDEX conflicts_field ON conflicts(incident_id, integration_id, field, id)
        """,
    )


@MIGRATIONS(name="0009_monitoring")
def _monitoring(db: Database) -> None:
    # What sync-status, doctor, /metrics and the incident timeline read, indexed; a refused
    # delivery leaves no event row, so its time and reason are kept with the integration; a
    # reconcile run keeps how much of what it found is still left to heal.
    _run(
        db,
        """
        CREATE INDEX inbound_events_received ON inbound_events(integration_id, received_at);
        CREATE INDEX inbound_events_incident ON inbound_events(incident_id);
        CREATE INDEX pushes_incident ON pushes(incident_id);
        ALTER TABLE integration_state ADD COLUMN last_rejected_at TEXT;
        ALTER TABLE integration_state ADD COLUMN last_rejection TEXT;
        ALTER TABLE reconcile_runs ADD COLUMN unresolved INTEGER NOT NULL DEFAULT 0
        """,
    )


@MIGRATIONS(name="0010_security")
def _security(db: Database) -> None:
    # The audit log: every mutation (with how it ended) and every denial. A webhook secret
    # being rotated keeps its predecessor valid until ``expires_at``. The Rego policy in
    # force, when a user replaced the shipped one, lives in meta (key "policy").
    _run(
        db,
        """
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            principal TEXT NOT NULL,
            via TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL DEFAULT '',
            decision TEXT NOT NULL CHECK (decision IN ('allow', 'deny')),
            reason TEXT NOT NULL,
            outcome TEXT,
            error TEXT
        );
        CREATE INDEX audit_log_at ON audit_log(at);
        CREATE INDEX audit_log_principal ON audit_log(principal, at);
        ALTER TABLE integration_secrets ADD COLUMN expires_at TEXT
        """,
    )


def pending(db: Database) -> list[str]:
    return [m.name for m in MIGRATIONS.pending(db)]


def apply(db: Database) -> None:
    """Apply pending migrations. Call inside store.write() so two processes never race."""
    MIGRATIONS.apply(db)
