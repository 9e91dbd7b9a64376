"""One behavioural suite, run against each connector and its simulator (in-process, on a
frozen clock): what the sync engine relies on, observed through the vendor's own API."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta

import pytest

from im.clock import FrozenClock, format_time
from im.connectors.http import (
    AuthError,
    PermanentError,
    RateLimitedError,
    RecordNotFoundError,
    RequestTimeoutError,
    RetryableError,
)
from im.errors import SignatureError
from tests.connectors.harness import Harness, make

KINDS = ["servicenow", "jira", "pagerduty"]


def key(n: int) -> str:
    return f"im:0f3c2a9e-test:INC-{n}"


@pytest.fixture(params=KINDS)
def h(request: pytest.FixtureRequest, clock: FrozenClock) -> Iterator[Harness]:
    harness = make(request.param, clock)
    yield harness
    harness.close()


def expected(h: Harness, values: dict[str, str]) -> dict[str, str]:
    return {f: h.connector.normalise(f, v) for f, v in values.items()}


def test_create_then_get_returns_what_was_sent(h: Harness) -> None:
    record = h.connector.create(h.sample, key(1))
    assert record.correlation_key == key(1)
    fetched = h.connector.get(record.id)
    assert {f: fetched.fields.get(f) for f in h.sample} == expected(h, dict(h.sample))
    assert fetched.id == record.id and fetched.key and fetched.url
    assert h.sim.record_count() == 1


def test_unknown_correlation_key_finds_nothing(h: Harness) -> None:
    h.connector.create(h.sample, key(1))
    assert h.connector.find_by_correlation(key(99)) is None


def test_create_whose_response_is_lost_is_found_and_not_made_twice(h: Harness) -> None:
    h.sim.faults.update({"write_timeout_rate": 1})
    with pytest.raises(RequestTimeoutError):
        h.connector.create(h.sample, key(2))
    h.sim.faults.update({"write_timeout_rate": 0})
    # what the dispatcher does with an in-doubt create: look the key up before sending again
    found = h.connector.find_by_correlation(key(2))
    assert found is not None
    assert found.fields["title"] == h.connector.normalise("title", h.sample["title"])
    assert h.sim.record_count() == 1


def test_update_walks_every_mapped_field_including_status_paths(h: Harness) -> None:
    record = h.connector.create(h.sample, key(3))
    version = record.version
    for field, value in h.updates:
        h.clock.advance(1)
        after = h.connector.update(record.id, {field: value})
        want = h.connector.normalise(field, value)
        assert after.fields[field] == want, (field, value)
        assert h.connector.get(record.id).fields[field] == want, (field, value)
        assert after.version > version, (field, value)
        version = after.version


def test_journals_both_ways_without_duplicates(h: Harness) -> None:
    record = h.connector.create(h.sample, key(4))
    ours = {}
    for field in h.journal_fields:
        h.clock.advance(1)
        ours[field] = h.connector.add_journal(record.id, field, f"{field} from im")
        h.clock.advance(1)
        h.agent_journal(record.id, field, f"{field} from the agent")
    entries = h.connector.list_journal(record.id)
    ids = [e.vendor_id for e in entries]
    assert len(ids) == len(set(ids))
    assert sorted((e.field, e.body) for e in entries) == sorted(
        [(f, f"{f} from im") for f in h.journal_fields]
        + [(f, f"{f} from the agent") for f in h.journal_fields]
    )
    for field, entry in ours.items():
        assert entry.vendor_id in ids
        assert entry.field == field


def test_listing_in_scope_pages_past_two_pages(h: Harness) -> None:
    created = set()
    for n in range(7):  # the harness pages by 2
        h.clock.advance(1)
        created.add(h.connector.create({**h.sample, "title": f"page {n}"}, key(10 + n)).id)
    listed = [r.id for r in h.connector.list_in_scope()]
    assert sorted(listed) == sorted(created)


def test_created_at_is_the_vendors_creation_time_and_stays(h: Harness) -> None:
    h.clock.advance(1.25)  # milliseconds where the vendor keeps them
    record = h.connector.create(h.sample, key(15))
    assert record.created_at == h.created_in_vendor(record.id)
    assert record.created_at.endswith("Z") and len(record.created_at) == 24
    h.clock.advance(3600)
    h.agent_edit(record.id, *h.updates[0])
    fetched = h.connector.get(record.id)
    assert fetched.created_at == record.created_at
    assert fetched.updated_at > fetched.created_at
    listed = {r.id: r for r in h.connector.list_in_scope()}
    assert listed[record.id].created_at == record.created_at


def test_listing_created_since_has_every_later_record(h: Harness) -> None:
    ancient = h.connector.create({**h.sample, "title": "three days before"}, key(16))
    h.clock.advance(3 * 86_400 - 30)
    just_before = h.connector.create({**h.sample, "title": "just before"}, key(17))
    h.clock.advance(30.5)
    cutoff = h.clock.now()
    at_cutoff = h.connector.create({**h.sample, "title": "at the cutoff"}, key(18))
    later = set()
    for n in range(4):  # past two pages of the harness
        h.clock.advance(61)
        later.add(h.connector.create({**h.sample, "title": f"later {n}"}, key(19 + n)).id)
    h.clock.advance(5)
    listed = list(h.connector.list_in_scope(created_since=cutoff))
    ids = [r.id for r in listed]
    assert len(ids) == len(set(ids))
    assert {at_cutoff.id, *later} <= set(ids)
    # earlier records only as far back as the vendor's filter is coarse
    assert ancient.id not in ids
    assert just_before.id not in ids or h.created_since_slack > timedelta(seconds=30)
    floor = format_time(cutoff - h.created_since_slack)
    assert all(r.created_at >= floor for r in listed)
    assert [r.created_at for r in listed] == sorted(r.created_at for r in listed)
    # a cutoff after every record: an empty listing, not an error
    assert list(h.connector.list_in_scope(created_since=h.clock.now() + timedelta(days=3))) == []


def test_listing_in_scope_neither_skips_nor_repeats_while_records_change(h: Harness) -> None:
    created = [
        h.connector.create({**h.sample, "title": f"same moment {n}"}, key(30 + n)).id
        for n in range(7)  # all in one second, so only the tie-breaker orders them
    ]
    h.clock.advance(2)
    listed = []
    for record in h.connector.list_in_scope():  # two a page
        listed.append(record.id)
        # a person edits what was just listed and what is still to come, between pages
        h.clock.advance(2)
        h.agent_edit(record.id, "title", f"edited after listing {len(listed)}")
        waiting = [i for i in created if i not in listed]
        if waiting:
            h.agent_edit(waiting[0], "title", f"edited before listing {len(listed)}")
        h.clock.advance(2)
    assert sorted(listed) == sorted(created)
    assert len(listed) == len(set(listed))


def test_listing_journals_of_several_records_at_once(h: Harness) -> None:
    first = h.connector.create({**h.sample, "title": "first"}, key(40))
    second = h.connector.create({**h.sample, "title": "second"}, key(41))
    quiet = h.connector.create({**h.sample, "title": "no journal"}, key(42))
    for field in h.journal_fields:
        h.clock.advance(1)
        h.connector.add_journal(first.id, field, f"{field} from im")
        h.agent_journal(second.id, field, f"{field} from the agent")
        h.agent_journal(first.id, field, f"{field} in the same second")
    ids = [second.id, quiet.id, first.id]
    journals = h.connector.list_journals(ids)
    assert sorted(journals) == sorted(ids)
    assert journals == {i: h.connector.list_journal(i) for i in ids}
    assert journals[quiet.id] == []
    assert len(journals[first.id]) == 2 * len(h.journal_fields)
    for entries in journals.values():
        assert [e.created_at for e in entries] == sorted(e.created_at for e in entries)
    assert h.connector.list_journals([]) == {}


def test_in_scope_keeps_the_records_that_exist_and_match_the_scope(h: Harness) -> None:
    inside = [
        h.connector.create({**h.sample, "title": f"ours {n}"}, key(50 + n)).id for n in range(3)
    ]
    other = h.other_scope()
    try:
        outside = other.create({**h.sample, "title": "another team's"}, key(53)).id
        h.clock.advance(5)  # past any search lag: the other connector's write is not ours
        assert other.in_scope([*inside, outside]) == {outside}
    finally:
        other.close()
    asked = [outside, inside[0], h.missing_id, inside[1], inside[2], inside[0]]
    assert h.connector.in_scope(asked) == set(inside)
    assert h.connector.in_scope([h.missing_id, outside]) == set()
    assert h.connector.in_scope([]) == set()


def test_in_scope_takes_more_ids_than_one_request_holds(h: Harness) -> None:
    created = [h.connector.create({"title": f"many {n}"}, key(100 + n)).id for n in range(103)]
    h.clock.advance(5)
    # the missing id and the last records in a second batch, the first batch full
    asked = [*created[:100], h.missing_id, *created[100:]]
    assert h.connector.in_scope(asked) == set(created)
    assert h.connector.in_scope(asked[::-1]) == set(created)


def test_listing_changed_since_includes_every_later_change(h: Harness) -> None:
    old = h.connector.create({**h.sample, "title": "old"}, key(20))
    h.clock.advance(600)
    since = h.clock.now() - timedelta(seconds=1)
    new = h.connector.create({**h.sample, "title": "new"}, key(21))
    h.clock.advance(60)
    edited = h.connector.create({**h.sample, "title": "edited later"}, key(22))
    h.clock.advance(60)
    h.agent_edit(edited.id, "title", "edited by the agent")
    changed = {r.id: r for r in h.connector.list_changed(since)}
    assert new.id in changed and edited.id in changed
    assert changed[edited.id].fields["title"] == "edited by the agent"
    # a superset is allowed where the vendor cannot filter; the old record is unchanged then
    if old.id in changed:
        assert changed[old.id].version == old.version


def test_rate_limit_is_honoured_with_the_vendors_wait(h: Harness) -> None:
    record = h.connector.create(h.sample, key(30))
    h.sim.faults.update({"rate_limit_rate": 1, "retry_after": 7})
    with pytest.raises(RateLimitedError) as caught:
        h.connector.get(record.id)
    assert caught.value.retry_after == 7


def test_server_errors_are_retryable(h: Harness) -> None:
    record = h.connector.create(h.sample, key(31))
    h.sim.faults.update({"error_rate": 1})
    with pytest.raises(RetryableError) as caught:
        h.connector.get(record.id)
    assert caught.value.status == 500


def test_missing_record_is_not_found(h: Harness) -> None:
    with pytest.raises(RecordNotFoundError):
        h.connector.get("does-not-exist-0000")


@pytest.mark.parametrize("status", [400, 422])
def test_rejected_write_is_permanent_with_the_vendors_text(h: Harness, status: int) -> None:
    record = h.connector.create(h.sample, key(32))
    h.sim.faults.update({"permanent_error": status})
    with pytest.raises(PermanentError) as caught:
        h.connector.update(record.id, {"title": "refused"})
    assert caught.value.status == status
    assert "simulated permanent error" in caught.value.message


def test_wrong_credentials_are_a_clear_auth_error(h: Harness) -> None:
    record = h.connector.create(h.sample, key(33))
    wrong = h.with_wrong_credentials()
    try:
        with pytest.raises(AuthError) as caught:
            wrong.get(record.id)
        assert caught.value.status == 401
        checks = wrong.check()
        assert any(not c.ok for c in checks)
    finally:
        wrong.close()


def test_check_passes_with_the_integration_account(h: Harness) -> None:
    checks = h.connector.check()
    assert checks and all(c.ok for c in checks), checks
    assert not any(c.warning for c in checks), checks


def _deliveries(h: Harness) -> list:
    return list(h.sim.webhooks.pending)


def test_agent_edit_arrives_as_an_authentic_webhook(h: Harness) -> None:
    record = h.connector.create(h.sample, key(40))
    h.sim.webhooks.pending.clear()
    field, value = h.updates[0]
    h.clock.advance(5)
    h.agent_edit(record.id, field, value)
    deliveries = _deliveries(h)
    assert deliveries, "the simulator sent no webhook for the agent's edit"
    request = h.request_for(deliveries[-1])
    h.connector.verify_webhook(request, [h.webhook_secret], h.clock.now())
    event = h.connector.parse_webhook(request)
    assert event is not None
    assert event.external_id == record.id
    assert event.changes[field] == h.connector.normalise(field, value)
    assert not event.by_self
    assert event.delivery_id
    assert event.version > record.version
    assert event.correlation_key in (None, key(40))


def test_our_own_write_comes_back_marked_as_ours(h: Harness) -> None:
    record = h.connector.create(h.sample, key(41))
    h.sim.webhooks.pending.clear()
    field, value = h.updates[0]
    h.clock.advance(5)
    after = h.connector.update(record.id, {field: value})
    events = [h.connector.parse_webhook(h.request_for(d)) for d in _deliveries(h)]
    mine = [e for e in events if e is not None and field in e.changes]
    assert mine and all(e.by_self for e in mine)
    assert mine[-1].version == after.version


def test_agent_journal_arrives_in_a_webhook_with_its_vendor_id(h: Harness) -> None:
    record = h.connector.create(h.sample, key(42))
    for field in h.journal_fields:
        h.sim.webhooks.pending.clear()
        h.clock.advance(5)
        h.agent_journal(record.id, field, f"{field} by hand")
        events = [h.connector.parse_webhook(h.request_for(d)) for d in _deliveries(h)]
        journals = [j for e in events if e is not None for j in e.journals]
        assert [(j.field, j.body) for j in journals] == [(field, f"{field} by hand")]
        listed = {e.vendor_id for e in h.connector.list_journal(record.id)}
        assert journals[0].vendor_id in listed


def test_tampered_or_wrongly_signed_webhooks_are_refused(h: Harness) -> None:
    record = h.connector.create(h.sample, key(43))
    h.sim.webhooks.pending.clear()
    h.agent_edit(record.id, *h.updates[0])
    request = h.request_for(_deliveries(h)[-1])
    h.connector.verify_webhook(request, ["another-secret", h.webhook_secret], h.clock.now())
    with pytest.raises(SignatureError):
        h.connector.verify_webhook(request, [_other_secret(h)], h.clock.now())
    if h.signs_body:
        tampered = dataclasses.replace(request, body=request.body + b" ")
    else:
        tampered = dataclasses.replace(request, path=request.path + "-elsewhere")
    with pytest.raises(SignatureError):
        h.connector.verify_webhook(tampered, [h.webhook_secret], h.clock.now())


def _other_secret(h: Harness) -> str:
    return "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" if h.kind == "servicenow" else "not-the-secret"


def test_jira_admin_webhook_signatures_cover_the_body(clock: FrozenClock) -> None:
    h = make("jira", clock, signing="hub")
    try:
        record = h.connector.create(h.sample, key(44))
        h.sim.webhooks.pending.clear()
        h.agent_edit(record.id, *h.updates[0])
        request = h.request_for(_deliveries(h)[-1])
        assert "x-hub-signature" in request.headers and "authorization" not in request.headers
        h.connector.verify_webhook(request, [h.webhook_secret], h.clock.now())
        with pytest.raises(SignatureError):
            h.connector.verify_webhook(
                dataclasses.replace(request, body=request.body + b" "),
                [h.webhook_secret],
                h.clock.now(),
            )
    finally:
        h.close()
