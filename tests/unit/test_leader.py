"""The Lease adapter (``leader.LeaderElector``) against an in-memory Lease with the API server's
optimistic concurrency: a create of an existing Lease and an update at an old
``resourceVersion`` are refused with 409. Time is a fake clock, but for the renew thread and its
watchdog, which run with timings of a few hundred milliseconds."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from kubernetes import client

from celery_operator.election import Timings
from celery_operator.leader import LeaderElector, Outcome

NS, NAME = "ops", "celery-operator"
TIMINGS = Timings(lease_duration=10, renew_deadline=7, retry_period=2)
FAST = Timings(lease_duration=0.6, renew_deadline=0.4, retry_period=0.1)


class FakeLeases:
    """One namespace's Leases, as the API server keeps them."""

    def __init__(self) -> None:
        self.leases: dict[str, client.V1Lease] = {}
        self.version = 0
        self.writes: list[str] = []
        self.before_write: Callable[[], object] | None = None
        """Run once, before the next write lands (to let another candidate win a race)."""
        self.failing = False

    def _check(self) -> None:
        if self.failing:
            raise client.ApiException(status=503, reason="Service Unavailable")

    def _store(self, body: client.V1Lease) -> client.V1Lease:
        self.version += 1
        stored = copy.deepcopy(body)
        assert stored.metadata is not None
        stored.metadata.resource_version = str(self.version)
        self.leases[str(stored.metadata.name)] = stored
        return copy.deepcopy(stored)

    def _hook(self) -> None:
        hook, self.before_write = self.before_write, None
        if hook:
            hook()

    def read_namespaced_lease(
        self, name: str, namespace: str, *, _request_timeout: float
    ) -> client.V1Lease:
        self._check()
        if name not in self.leases:
            raise client.ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.leases[name])

    def create_namespaced_lease(
        self, namespace: str, body: client.V1Lease, *, _request_timeout: float
    ) -> client.V1Lease:
        self._check()
        self._hook()
        assert body.metadata is not None
        if body.metadata.name in self.leases:
            raise client.ApiException(status=409, reason="AlreadyExists")
        self.writes.append(f"create {body.spec and body.spec.holder_identity}")
        return self._store(body)

    def replace_namespaced_lease(
        self, name: str, namespace: str, body: client.V1Lease, *, _request_timeout: float
    ) -> client.V1Lease:
        self._check()
        self._hook()
        live = self.leases[name]
        assert body.metadata is not None
        assert live.metadata is not None
        if body.metadata.resource_version != live.metadata.resource_version:
            raise client.ApiException(status=409, reason="Conflict")
        self.writes.append(f"replace {body.spec and body.spec.holder_identity}")
        return self._store(body)

    def holder(self) -> str | None:
        spec = self.leases[NAME].spec
        return spec.holder_identity if spec else None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(
    leases: FakeLeases,
    identity: str,
    timings: Timings = TIMINGS,
    clock: Callable[[], float] = time.monotonic,
    on_lost: Callable[[str], None] = lambda _: None,
) -> LeaderElector:
    return LeaderElector(
        leases,
        namespace=NS,
        name=NAME,
        identity=identity,
        timings=timings,
        on_lost=on_lost,
        clock=clock,
        wall=lambda: datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=UTC),
    )


def test_of_two_candidates_that_find_no_lease_one_creates_it() -> None:
    leases = FakeLeases()
    a, b = elector(leases, "a"), elector(leases, "b")
    leases.before_write = b.attempt  # b creates it between a's read and a's write
    assert a.attempt()[0] is Outcome.HELD_ELSEWHERE  # a's create: 409 AlreadyExists
    assert leases.writes == ["create b"]
    assert b.attempt()[0] is Outcome.HOLDING
    assert a.attempt()[0] is Outcome.HELD_ELSEWHERE


def test_of_two_candidates_taking_an_expired_lease_only_one_wins() -> None:
    leases, clock = FakeLeases(), Clock()
    old = elector(leases, "old", clock=clock)
    assert old.attempt()[0] is Outcome.HOLDING
    a, b = elector(leases, "a", clock=clock), elector(leases, "b", clock=clock)
    a.attempt(), b.attempt()  # both see "old" fresh
    clock.now += 10  # "old" was killed: no renewal for the lease duration
    leases.before_write = b.attempt  # b takes it between a's read and a's write
    assert a.attempt()[0] is Outcome.HELD_ELSEWHERE  # a's update at the old version: 409
    assert leases.writes == ["create old", "replace b"]
    assert leases.holder() == "b"


def test_a_standby_waits_the_lease_duration_then_takes_over_and_counts_the_transition() -> None:
    leases, clock = FakeLeases(), Clock()
    assert elector(leases, "a", clock=clock).attempt()[0] is Outcome.HOLDING
    b = elector(leases, "b", clock=clock)
    outcome, retry_in = b.attempt()
    assert (outcome, retry_in) == (Outcome.HELD_ELSEWHERE, 2)
    clock.now += 9.5
    outcome, retry_in = b.attempt()
    assert outcome is Outcome.HELD_ELSEWHERE
    assert retry_in == pytest.approx(0.5)  # at the moment it expires, not a period later
    clock.now += 0.5
    assert b.attempt()[0] is Outcome.HOLDING
    spec = leases.leases[NAME].spec
    assert spec is not None
    assert (spec.holder_identity, spec.lease_transitions) == ("b", 1)


def test_a_released_lease_is_taken_at_the_next_attempt() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "a", clock=clock), elector(leases, "b", clock=clock)
    assert a.acquire(threading.Event())
    assert b.attempt()[0] is Outcome.HELD_ELSEWHERE
    a.release()
    assert leases.holder() is None
    assert b.attempt()[0] is Outcome.HOLDING  # at once, no lease duration to wait


def test_a_leader_that_cannot_renew_gives_up_at_the_renew_deadline() -> None:
    leases, lost = FakeLeases(), threading.Event()
    reasons: list[str] = []

    def on_lost(reason: str) -> None:
        reasons.append(reason)
        lost.set()

    a = elector(leases, "a", FAST, on_lost=on_lost)
    assert a.acquire(threading.Event())
    started = time.monotonic()
    a.start_renewing()
    leases.failing = True
    assert lost.wait(2)
    assert time.monotonic() - started == pytest.approx(FAST.renew_deadline, abs=0.15)
    assert reasons == ["could not renew it for 0.4 s"]
    assert not a.leading


def test_a_leader_that_finds_another_holder_gives_up_at_once() -> None:
    leases, lost = FakeLeases(), threading.Event()
    a = elector(leases, "a", FAST, on_lost=lambda _: lost.set())
    assert a.acquire(threading.Event())
    a.start_renewing()
    lease = leases.leases[NAME]
    assert lease.spec is not None
    lease.spec.holder_identity = "intruder"  # whatever wrote it, it is not ours now
    assert lost.wait(FAST.retry_period * 3)
    assert leases.holder() == "intruder"  # never taken back


def test_a_renewing_leader_keeps_the_lease_and_release_stops_it_quietly() -> None:
    leases, lost = FakeLeases(), threading.Event()
    a = elector(leases, "a", FAST, on_lost=lambda _: lost.set())
    assert a.acquire(threading.Event())
    a.start_renewing()
    time.sleep(FAST.lease_duration)
    assert leases.writes.count("replace a") >= 3
    a.release()
    assert not lost.is_set()
    assert leases.writes[-1] == "replace None"


def test_acquire_returns_when_stopped_while_standing_by() -> None:
    leases = FakeLeases()
    assert elector(leases, "a").attempt()[0] is Outcome.HOLDING
    stop = threading.Event()
    stop.set()
    assert not elector(leases, "b").acquire(stop)
