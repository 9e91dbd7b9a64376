"""The Drift Detector's rules (SPEC §7), pure: given one field's three values (the platform's
now, the external system's now, the synced snapshot), the integration's direction and the
ownership rule, what reconciliation should do. ``im.sync.reconcile`` gathers the values,
asks these rules, and applies the answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from im.connectors.base import JournalEntry
from im.model import Direction, Owner

PUSH = "push"
PULL = "pull"
SHADOWED = "shadowed"
BLOCKED = "blocked-by-direction"
HELD = "held"
CONFLICT = "conflict"
MISSING = "missing-external"
CREATE_PLATFORM = "create-platform"
APPEND_JOURNAL = "append-journal"
LINK = "link"
DUPLICATE = "duplicate-external"
REFUSED = "refused"  # a pull the platform cannot take (closed is final, not an email, ...)
OUT_OF_SCOPE = "out-of-scope"  # a linked record that left the integration's scope
# what a person or --auto-heal must still act on: left after a run, it makes the integration
# degraded (blocked, shadowed and out-of-scope items are reports; a conflict is its own reason)
NEEDS_ACTION = frozenset(
    {PUSH, PULL, APPEND_JOURNAL, CREATE_PLATFORM, LINK, MISSING, DUPLICATE, REFUSED}
)
# what --auto-heal acts on (missing-external only with --recreate-missing)
HEALABLE = frozenset({PUSH, PULL, APPEND_JOURNAL, CREATE_PLATFORM, LINK})
# a concurrent change on a bidirectional integration: the conflict rules decide (SPEC §6)
CONCURRENT = "concurrent"


@dataclass(frozen=True)
class FieldState:
    field: str
    platform: str  # normalised as the vendor would store it
    external: str
    snapshot: str | None  # None: never synced
    direction: Direction
    owner: Owner | None  # the integration's rule for the field
    # among the field's external owners, the one that decides when it is not this one
    shadowed_by: str | None = None
    held_by: int | None = None  # a pending conflict holds the field (manual review)
    accepted: bool = False  # an ignored conflict accepted exactly this divergence


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str


def _blocked(direction: Direction, wanted: str) -> Decision:
    why = "outbound only" if direction is Direction.OUTBOUND else "inbound only"
    return Decision(BLOCKED, f"would {wanted}, but the integration is {why}")


def _push(state: FieldState, reason: str) -> Decision:
    return Decision(PUSH, reason) if state.direction.sends else _blocked(state.direction, PUSH)


def _pull(state: FieldState, reason: str) -> Decision:
    return Decision(PULL, reason) if state.direction.receives else _blocked(state.direction, PULL)


def decide_field(state: FieldState) -> Decision | None:
    """What to do about one field; None when the two sides agree or the divergence was
    accepted."""
    if state.platform == state.external or state.accepted:
        return None
    if state.held_by is not None:
        return Decision(HELD, f"held by conflict-{state.held_by}")
    if state.owner is Owner.PLATFORM:
        return _push(state, "the platform owns it")
    if state.owner is Owner.EXTERNAL:
        if not state.direction.receives:
            return _blocked(state.direction, PULL)
        if state.shadowed_by is not None:
            return Decision(SHADOWED, f"{state.shadowed_by} owns it with a higher priority")
        return _pull(state, "this integration owns it")
    if state.snapshot is None:  # never agreed: the side with a value moved
        platform_moved, external_moved = bool(state.platform), bool(state.external)
    else:
        platform_moved = state.platform != state.snapshot
        external_moved = state.external != state.snapshot
    if platform_moved and not external_moved:
        return _push(state, "only the platform changed it")
    if external_moved and not platform_moved:
        return _pull(state, "only the external system changed it")
    if state.direction is Direction.BIDIRECTIONAL:
        return Decision(CONCURRENT, "both sides changed it")
    if state.direction.sends:
        return Decision(PUSH, "both sides changed it; outbound only: the platform's value")
    return Decision(PULL, "both sides changed it; inbound only: the external value")


@dataclass(frozen=True)
class PlatformEntry:
    id: int
    kind: str
    body: str


@dataclass(frozen=True)
class JournalDiff:
    """Entries on one side only, and pairs that are the same entry not yet linked."""

    matched: list[tuple[int, str]]  # (platform entry id, vendor id)
    external_only: list[JournalEntry]
    platform_only: list[PlatformEntry]


def diff_journal(
    platform: Sequence[PlatformEntry],
    external: Sequence[JournalEntry],
    normalise: Callable[[str, str], str],
    sending: Sequence[PlatformEntry] = (),
) -> JournalDiff:
    """Pair unlinked entries of the same kind and text, oldest first; the rest are missing on
    the other side. Every sequence holds only entries not linked yet. ``sending`` are ours
    still in the outbox: a copy there is one of them arriving (an attempt whose answer was
    lost, a send under way), so it is neither missing here nor linked by us."""
    remaining = list(external)

    def twin(entry: PlatformEntry) -> JournalEntry | None:
        text = normalise(entry.kind, entry.body)
        found = next(
            (e for e in remaining if e.field == entry.kind and normalise(e.field, e.body) == text),
            None,
        )
        if found is not None:
            remaining.remove(found)
        return found

    for entry in sending:
        twin(entry)
    matched: list[tuple[int, str]] = []
    platform_only: list[PlatformEntry] = []
    for entry in platform:
        found = twin(entry)
        if found is None:
            platform_only.append(entry)
        else:
            matched.append((entry.id, found.vendor_id))
    return JournalDiff(matched, remaining, platform_only)
