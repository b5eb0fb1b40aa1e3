"""The leader-election policy (``election.decide``): client-go's rules on an observed Lease.

Every case observes the Lease at monotonic time 100 (``SEEN``) and decides at ``SEEN + after``;
``STAMP`` is the wall-clock time written, so nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from celery_operator.election import (
    RELEASED_LEASE_SECONDS,
    Action,
    LeaseRecord,
    Observation,
    Timings,
    decide,
    expires_at,
    must_stop_leading,
    observe,
    released,
)

TIMINGS = Timings(lease_duration=10, renew_deadline=7, retry_period=2)
ME = "operator-a_1f2e3d4c"
OTHER = "operator-b_9a8b7c6d"
SEEN = 100.0
STAMP = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
EARLIER = STAMP - timedelta(minutes=5)


def held_by(holder: str, duration: int = 10, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(holder, duration, EARLIER, EARLIER, transitions)


@dataclass(frozen=True)
class Case:
    record: LeaseRecord | None
    after: float
    """Seconds since the record was first seen as it is."""
    action: Action
    written: LeaseRecord | None
    retry_in: float


CASES = {
    "no lease: create it, held by us": Case(
        None, 0, Action.CREATE, LeaseRecord(ME, 10, STAMP, STAMP, 0), 2
    ),
    "released (no holder): take it at once": Case(
        released(held_by(OTHER), EARLIER),
        0,
        Action.ACQUIRE,
        LeaseRecord(ME, 10, STAMP, STAMP, 4),
        2,
    ),
    "held by another, just renewed: stand by a retry period": Case(
        held_by(OTHER), 0, Action.STANDBY, None, 2
    ),
    "held by another, expiring in 0.5 s: try again at expiry": Case(
        held_by(OTHER), 9.5, Action.STANDBY, None, 0.5
    ),
    "held by another, not renewed for the lease duration: take it over": Case(
        held_by(OTHER), 10, Action.ACQUIRE, LeaseRecord(ME, 10, STAMP, STAMP, 4), 2
    ),
    "the holder's own longer duration counts, not ours": Case(
        held_by(OTHER, duration=30), 15, Action.STANDBY, None, 2
    ),
    "a record without a duration lasts ours": Case(
        held_by(OTHER, duration=0), 10, Action.ACQUIRE, LeaseRecord(ME, 10, STAMP, STAMP, 4), 2
    ),
    # Its renewTime is five minutes old on the writer's clock, yet we have just seen it: expiry
    # runs from when we saw it, so a skewed clock never hastens a takeover.
    "an old renewTime seen just now is not expired": Case(
        held_by(OTHER), 1, Action.STANDBY, None, 2
    ),
    "held by us: renew, acquire time and transitions kept": Case(
        held_by(ME), 3, Action.RENEW, LeaseRecord(ME, 10, EARLIER, STAMP, 3), 2
    ),
    "held by us and past its duration on our clock: still ours to renew": Case(
        held_by(ME), 12, Action.RENEW, LeaseRecord(ME, 10, EARLIER, STAMP, 3), 2
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decide(case: Case) -> None:
    observed = Observation(case.record, SEEN)
    decision = decide(observed, ME, SEEN + case.after, STAMP, TIMINGS)
    assert decision.action is case.action
    assert decision.record == case.written
    assert decision.retry_in == pytest.approx(case.retry_in)


def test_an_unchanged_record_keeps_the_time_it_was_first_seen() -> None:
    first = observe(None, held_by(OTHER), SEEN)
    again = observe(first, held_by(OTHER), SEEN + 8)
    assert again.since == SEEN
    assert expires_at(again, TIMINGS) == SEEN + 10


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(LeaseRecord(OTHER, 10, EARLIER, STAMP, 3), id="renewed"),
        pytest.param(LeaseRecord(ME, 10, STAMP, STAMP, 4), id="changed-hands"),
        pytest.param(None, id="deleted"),
    ],
)
def test_a_changed_record_is_seen_anew(change: LeaseRecord | None) -> None:
    first = observe(None, held_by(OTHER), SEEN)
    assert observe(first, change, SEEN + 8).since == SEEN + 8


def test_a_killed_holder_is_taken_over_one_lease_duration_after_its_last_renewal_was_seen() -> None:
    """A standby polling every retry period, the holder's last renewal seen at 100 and none
    after: it stands by until 110, then takes the Lease (no poll lands past the expiry)."""
    observed: Observation | None = None
    now, actions = SEEN, []
    while True:
        observed = observe(observed, held_by(OTHER), now)
        decision = decide(observed, ME, now, STAMP, TIMINGS)
        actions.append((now, decision.action))
        if decision.action is not Action.STANDBY:
            break
        now += decision.retry_in
    taken_at, action = actions[-1]
    assert action is Action.ACQUIRE
    assert taken_at == pytest.approx(SEEN + 10)
    assert [a for _, a in actions[:-1]] == [Action.STANDBY] * 5


def test_a_released_record_names_nobody_and_keeps_the_count() -> None:
    record = released(held_by(ME), STAMP)
    assert record == LeaseRecord("", RELEASED_LEASE_SECONDS, EARLIER, STAMP, 3)


@pytest.mark.parametrize(
    ("since_renewal", "stop"),
    [
        pytest.param(0, False, id="just-renewed"),
        pytest.param(6.9, False, id="within-the-deadline"),
        pytest.param(7, True, id="at-the-deadline"),
        pytest.param(30, True, id="long-past"),
    ],
)
def test_the_holder_stops_leading_at_the_renew_deadline(since_renewal: float, stop: bool) -> None:
    assert must_stop_leading(SEEN, SEEN + since_renewal, TIMINGS) is stop


def test_the_holder_stops_before_the_others_may_take_over() -> None:
    assert TIMINGS.renew_deadline < TIMINGS.lease_duration


def test_a_fractional_lease_duration_is_written_rounded_up() -> None:
    timings = Timings(lease_duration=2.5, renew_deadline=2, retry_period=1)
    decision = decide(Observation(None, SEEN), ME, SEEN, STAMP, timings)
    assert decision.record is not None
    assert decision.record.lease_duration_seconds == 3


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "message"),
    [
        pytest.param(10, 7, 0, "retry period must be > 0", id="no-retry-period"),
        pytest.param(10, 2, 2, "renew deadline .* must be > the retry period", id="deadline-short"),
        pytest.param(7, 7, 2, "lease duration .* must be > the renew deadline", id="lease-short"),
    ],
)
def test_timings_that_could_let_two_lead_are_refused(
    lease: float, renew: float, retry: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Timings(lease_duration=lease, renew_deadline=renew, retry_period=retry)
