"""Leader election over a ``coordination.k8s.io`` Lease: the policy, without I/O.

The design is that of client-go's ``leaderelection`` package, which Kubernetes' own controllers
use. A candidate reads the Lease every *retry period*; it takes the Lease when nobody holds it
(never created, or released) or when the holder has not renewed it for the *lease duration*; the
holder renews it every retry period and must stop leading once it has failed to renew for the
*renew deadline*, which is shorter than the lease duration, so that it has stopped before anyone
else may take over. Writes carry the ``resourceVersion`` read, so of two candidates racing for
one Lease the API server lets one win (the other gets a conflict); that part is the adapter's
(``leader.py``).

Expiry is measured on the candidate's own clock, from the moment it first saw the record as it
is, never from the ``renewTime`` written by another machine: clocks that disagree can then delay
a takeover, never hasten it. Time is passed in: ``now`` is a monotonic reading in seconds,
``stamp`` the wall-clock time to write into the record.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime

RELEASED_LEASE_SECONDS = 1
"""The lease duration a released record carries (client-go writes the same): whoever reads it
later than that after the release may take it, and nobody holds it meanwhile anyway."""


@dataclass(frozen=True)
class Timings:
    """How long a Lease lasts and how often it is tried, in seconds."""

    lease_duration: float
    """How long the others wait, from when they last saw the record change, before they take
    the Lease of a holder that stopped renewing (a killed process)."""
    renew_deadline: float
    """How long the holder keeps leading while its renewals fail; then it stops."""
    retry_period: float
    """Seconds between two attempts to acquire (a standby) or to renew (the holder)."""

    def __post_init__(self) -> None:
        if self.retry_period <= 0:
            raise ValueError("the retry period must be > 0")
        if self.renew_deadline <= self.retry_period:
            raise ValueError(
                f"the renew deadline ({self.renew_deadline:g} s) must be > the retry period"
                f" ({self.retry_period:g} s): at least one retry before the holder gives up"
            )
        if self.lease_duration <= self.renew_deadline:
            raise ValueError(
                f"the lease duration ({self.lease_duration:g} s) must be > the renew deadline"
                f" ({self.renew_deadline:g} s): the holder stops before the others may take over"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The ``spec`` of a Lease, as leader election reads and writes it."""

    holder: str = ""
    """``holderIdentity``; empty when nobody holds the Lease (released)."""
    lease_duration_seconds: int = 0
    """``leaseDurationSeconds`` the holder wrote; 0 when missing."""
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0
    """``leaseTransitions``: how many times the Lease changed hands."""


@dataclass(frozen=True)
class Observation:
    """What a candidate last saw of the Lease, and since when (its own monotonic clock)."""

    record: LeaseRecord | None
    """None: no Lease exists."""
    since: float


def observe(previous: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """The observation after reading ``record`` at ``now``: its time is kept while the record is
    unchanged, so that a holder that stopped renewing expires."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


class Action(enum.Enum):
    CREATE = "create"
    """No Lease exists: create it, held by us."""
    ACQUIRE = "acquire"
    """The Lease is free or expired: take it over (update)."""
    RENEW = "renew"
    """We hold the Lease: write a new renew time (update)."""
    STANDBY = "standby"
    """Someone else holds the Lease and it has not expired: write nothing."""


@dataclass(frozen=True)
class Decision:
    action: Action
    record: LeaseRecord | None
    """What to write (None for STANDBY)."""
    retry_in: float
    """Seconds until the next attempt."""


def expires_at(observed: Observation, timings: Timings) -> float:
    """When, on the candidate's clock, the observed holder's Lease expires."""
    record = observed.record
    seconds = (record and record.lease_duration_seconds) or timings.lease_duration
    return observed.since + seconds


def decide(
    observed: Observation, identity: str, now: float, stamp: datetime, timings: Timings
) -> Decision:
    """What candidate ``identity`` does about the Lease it observed."""
    record = observed.record
    lease_seconds = _whole_seconds(timings.lease_duration)
    if record is None:
        mine = LeaseRecord(identity, lease_seconds, stamp, stamp, 0)
        return Decision(Action.CREATE, mine, timings.retry_period)
    if record.holder == identity:
        renewed = replace(
            record,
            lease_duration_seconds=lease_seconds,
            acquire_time=record.acquire_time or stamp,
            renew_time=stamp,
        )
        return Decision(Action.RENEW, renewed, timings.retry_period)
    if record.holder and now < expires_at(observed, timings):
        # Try again at the next period, or at the moment it expires if that comes sooner.
        wait = min(timings.retry_period, expires_at(observed, timings) - now)
        return Decision(Action.STANDBY, None, wait)
    taken = LeaseRecord(identity, lease_seconds, stamp, stamp, record.transitions + 1)
    return Decision(Action.ACQUIRE, taken, timings.retry_period)


def released(record: LeaseRecord, stamp: datetime) -> LeaseRecord:
    """The record a holder writes when it stops gracefully: nobody holds the Lease, and the
    next candidate to read it takes it at once."""
    return replace(
        record, holder="", lease_duration_seconds=RELEASED_LEASE_SECONDS, renew_time=stamp
    )


def must_stop_leading(last_renewed: float, now: float, timings: Timings) -> bool:
    """Whether the holder, whose last successful renewal was sent at ``last_renewed``, has
    failed to renew for the renew deadline and must stop leading."""
    return now - last_renewed >= timings.renew_deadline


def _whole_seconds(seconds: float) -> int:
    """``leaseDurationSeconds`` is whole seconds: round up, never promise less."""
    whole = int(seconds)
    return whole if whole == seconds else whole + 1
