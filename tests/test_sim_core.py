"""What every simulator shares: fault injection (at start and at run time) and outgoing
webhooks with per-resource order, the vendor's retries and the delivery faults."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from im.clock import FrozenClock
from im.sim.core import Faults, RetryPolicy, Simulator, parse_fault
from im.sim.server import free_port, serve_in_thread
from im.sim.transport import ASGIBridge


class ThingSim(Simulator):
    """A minimal vendor: POST /things/{id} changes a thing and sends a webhook."""

    kind = "things"
    retry = RetryPolicy(frozenset({500, 503}), (10.0, 60.0))

    def routes(self) -> list[BaseRoute]:
        async def change(request: Request) -> Response:
            thing = request.path_params["thing"]
            self.webhooks.emit(
                thing, {"thing": thing, "n": len(self.webhooks.log)}, self.next_delivery_id()
            )
            return JSONResponse({"ok": True})

        return [Route("/things/{thing}", change, methods=["POST"])]

    def sign(self, delivery_id: str, body: bytes, attempt: int) -> dict[str, str]:
        return {"x-delivery": delivery_id, "x-attempt": str(attempt)}

    def error(self, status: int, message: str) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    def rate_limited(self, retry_after: int) -> Response:
        return JSONResponse(
            {"error": "slow down"}, status_code=429, headers={"Retry-After": str(retry_after)}
        )


class Receiver:
    """The other end of the webhooks: answers what the test says, records what came."""

    def __init__(self) -> None:
        self.answers: list[int] = []
        self.received: list[tuple[str, str, str]] = []

        async def hook(request: Request) -> Response:
            body = await request.json()
            self.received.append(
                (body["thing"], request.headers["x-delivery"], request.headers["x-attempt"])
            )
            return Response(status_code=self.answers.pop(0) if self.answers else 202)

        self.bridge = ASGIBridge(Starlette(routes=[Route("/hook", hook, methods=["POST"])]))
        self.client = httpx.Client(transport=self.bridge, base_url="http://receiver")


@pytest.fixture
def sim(clock: FrozenClock) -> Iterator[ThingSim]:
    simulator = ThingSim(clock=clock, seed=7, webhook_url="http://receiver/hook")
    yield simulator
    simulator.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.bridge.shutdown()


def _api(sim: Simulator) -> httpx.Client:
    return httpx.Client(transport=sim.transport(), base_url="http://sim")


def test_deliveries_are_signed_and_sent_once(sim: ThingSim, receiver: Receiver) -> None:
    _api(sim).post("/things/a")
    assert sim.webhooks.deliver(receiver.client) == 1
    assert [(t, a) for t, _, a in receiver.received] == [("a", "1")]
    assert sim.webhooks.log[-1].outcome == "delivered"
    assert sim.webhooks.deliver(receiver.client) == 0


def test_a_refused_delivery_is_retried_on_the_vendors_schedule_then_given_up(
    sim: ThingSim, receiver: Receiver, clock: FrozenClock
) -> None:
    _api(sim).post("/things/a")
    receiver.answers = [500, 503, 500]
    sim.webhooks.deliver(receiver.client)
    clock.advance(9)
    assert sim.webhooks.deliver(receiver.client) == 0  # not yet due
    clock.advance(1)
    sim.webhooks.deliver(receiver.client)
    clock.advance(60)
    sim.webhooks.deliver(receiver.client)
    assert [a for _, _, a in receiver.received] == ["1", "2", "3"]
    assert len({d for _, d, _ in receiver.received}) == 1  # the same delivery id each time
    assert sim.webhooks.log[-1].outcome == "failed"
    assert not sim.webhooks.pending


def test_a_4xx_the_vendor_does_not_retry_is_dropped_at_once(
    sim: ThingSim, receiver: Receiver
) -> None:
    _api(sim).post("/things/a")
    receiver.answers = [400]
    sim.webhooks.deliver(receiver.client)
    assert sim.webhooks.log[-1].outcome == "failed" and not sim.webhooks.pending


def test_one_resource_waits_for_its_earlier_delivery_others_do_not(
    sim: ThingSim, receiver: Receiver, clock: FrozenClock
) -> None:
    api = _api(sim)
    api.post("/things/a")
    api.post("/things/a")
    api.post("/things/b")
    receiver.answers = [500]  # a's first delivery fails
    sim.webhooks.deliver(receiver.client)
    assert [t for t, _, _ in receiver.received] == ["a", "b"]
    clock.advance(10)
    sim.webhooks.deliver(receiver.client)
    assert [t for t, _, _ in receiver.received] == ["a", "b", "a", "a"]


def test_dropped_duplicated_and_delayed_deliveries(
    sim: ThingSim, receiver: Receiver, clock: FrozenClock
) -> None:
    api = _api(sim)
    sim.faults.update({"drop_webhooks": 1})
    api.post("/things/dropped")
    sim.faults.update({"drop_webhooks": 0, "duplicate_webhooks": 1})
    api.post("/things/twice")
    sim.faults.update({"duplicate_webhooks": 0, "delay_webhooks": 30})
    api.post("/things/late")
    sim.webhooks.deliver(receiver.client)
    assert [t for t, _, _ in receiver.received] == ["twice", "twice"]
    assert receiver.received[0][1] == receiver.received[1][1]  # a duplicate keeps its id
    clock.advance(30)
    sim.webhooks.deliver(receiver.client)
    assert [t for t, _, _ in receiver.received][-1] == "late"
    assert any(d.outcome == "dropped" for d in sim.webhooks.log)


def test_reordered_deliveries_overtake_the_one_before(sim: ThingSim, receiver: Receiver) -> None:
    api = _api(sim)
    api.post("/things/a")
    sim.faults.update({"reorder_webhooks": 1})
    api.post("/things/b")
    sim.webhooks.deliver(receiver.client)
    assert [t for t, _, _ in receiver.received] == ["b", "a"]


def test_api_faults_answer_before_the_vendor(sim: ThingSim) -> None:
    api = _api(sim)
    sim.faults.update({"error_rate": 1})
    assert api.post("/things/a").status_code == 500
    sim.faults.update({"error_rate": 0, "rate_limit_rate": 1, "retry_after": 9})
    limited = api.post("/things/a")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "9"
    sim.faults.update({"rate_limit_rate": 0, "permanent_error": 422})
    assert api.post("/things/a").status_code == 422
    assert not sim.webhooks.pending  # nothing was applied


def test_a_lost_response_was_applied_and_a_lost_request_was_not(sim: ThingSim) -> None:
    api = _api(sim)
    sim.faults.update({"timeout_rate": 1})
    with pytest.raises(httpx.ReadTimeout):
        api.post("/things/applied")
    sim.faults.update({"timeout_rate": 0, "lost_request_rate": 1})
    with pytest.raises(httpx.ReadTimeout):
        api.post("/things/lost")
    assert [d.resource for d in sim.webhooks.pending] == ["applied"]


def test_faults_change_at_run_time_over_http_and_bad_ones_are_refused(sim: ThingSim) -> None:
    api = _api(sim)
    assert api.post("/_sim/faults", json={"error-rate": 0.5, "retry_after": 3}).status_code == 200
    assert api.get("/_sim/faults").json()["error_rate"] == 0.5
    for bad in ({"error_rate": 2}, {"nonsense": 1}, ["error_rate"], {"latency": -1}):
        answer = api.post("/_sim/faults", json=bad)
        assert answer.status_code == 400 and answer.json()["error"]
    sim.faults.update({"error_rate": 1})
    assert api.get("/_sim/faults").status_code == 200  # admin routes are never faulted


def test_the_same_seed_makes_the_same_faults(clock: FrozenClock) -> None:
    def run(seed: int) -> list[int]:
        simulator = ThingSim(clock=clock, seed=seed, faults=Faults(error_rate=0.5))
        api = _api(simulator)
        codes = [api.post(f"/things/{n}").status_code for n in range(20)]
        simulator.shutdown()
        return codes

    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize("text", ["drop-webhooks", "=1", "drop-webhooks="])
def test_parse_fault_refuses_what_is_not_name_equals_value(text: str) -> None:
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_fault(text)


def test_webhook_log_is_visible_over_http(sim: ThingSim, receiver: Receiver) -> None:
    api = _api(sim)
    api.post("/things/a")
    sim.webhooks.deliver(receiver.client)
    shown: Any = api.get("/_sim/webhooks").json()
    assert shown["url"] == "http://receiver/hook"
    assert shown["log"][0]["outcome"] == "delivered" and shown["pending"] == []


def test_a_served_simulator_whose_receiver_is_gone_keeps_quiet_and_retries(
    clock: FrozenClock, capfd: pytest.CaptureFixture[str]
) -> None:
    """A daemon that went away is normal (`im demo` stopping it, the crash soak killing it):
    the delivery waits for its retry with the reason in its answers (GET /_sim/webhooks), and
    nothing is printed."""
    sim = ThingSim(clock=clock, seed=7, webhook_url=f"http://127.0.0.1:{free_port()}/hook")
    try:
        with serve_in_thread(sim) as served:
            assert httpx.post(f"{served.url}/things/a").status_code == 200
            deadline = time.monotonic() + 10
            while not (sim.webhooks.pending and sim.webhooks.pending[0].answers):
                assert time.monotonic() < deadline, "the delivery was never tried"
                time.sleep(0.02)
    finally:
        sim.shutdown()
    [delivery] = sim.webhooks.pending
    assert delivery.answers[0].endswith("attempt 1: no answer (ConnectError)")
    assert delivery.attempt == 2
    assert capfd.readouterr() == ("", "")
