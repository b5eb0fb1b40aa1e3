"""The adapter that holds the operator's leader Lease (``coordination.k8s.io/v1``), and what a
standby serves meanwhile.

The policy is :mod:`celery_operator.election` (client-go's rules); this module reads and writes
the Lease through the client's ``CoordinationV1Api``. Every update carries the
``resourceVersion`` that was read, and a create fails when the Lease exists, so of two candidates
that both find the Lease free or expired the API server lets exactly one write: the other's
conflict (409) means it lost the race, and it stands by.

:class:`LeaderElector` gives a blocking :meth:`~LeaderElector.acquire`, a renew thread with a
watchdog that calls ``on_lost`` once renewing has failed for the renew deadline (or someone else
holds the Lease), and :meth:`~LeaderElector.release` for a graceful stop. :class:`StandbyHealth`
answers ``/healthz`` on the liveness port while the process stands by, where Kopf answers once
it leads.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Protocol

import urllib3
from kubernetes import client
from prometheus_client import Gauge

from celery_operator.election import (
    Action,
    LeaseRecord,
    Observation,
    Timings,
    decide,
    must_stop_leading,
    observe,
    released,
)

log = logging.getLogger(__name__)

LEADING: Final = Gauge(
    "celery_operator_leader",
    "1 while this operator process holds the leader Lease and reconciles, 0 while it stands by "
    "(sum over the operator's pods: 1).",
)
CONFLICT: Final = 409
NOT_FOUND: Final = 404
_API_ERRORS: Final = (client.ApiException, urllib3.exceptions.HTTPError, OSError)


class LeaseApi(Protocol):
    """The three calls of ``client.CoordinationV1Api`` that leader election makes."""

    def read_namespaced_lease(
        self, name: str, namespace: str, *, _request_timeout: float
    ) -> client.V1Lease: ...

    def create_namespaced_lease(
        self, namespace: str, body: client.V1Lease, *, _request_timeout: float
    ) -> client.V1Lease: ...

    def replace_namespaced_lease(
        self, name: str, namespace: str, body: client.V1Lease, *, _request_timeout: float
    ) -> client.V1Lease: ...


def lease_api(api: client.ApiClient) -> LeaseApi:
    return client.CoordinationV1Api(api)


class Outcome(enum.Enum):
    HOLDING = "holding"
    """The attempt wrote the Lease: we hold it until the next renewal is due."""
    HELD_ELSEWHERE = "held elsewhere"
    """Someone else holds the Lease (read, or we lost a race to write it)."""
    FAILED = "failed"
    """The API did not answer or refused: nothing is known."""


def stamp_now() -> datetime:
    """Now, for ``acquireTime``/``renewTime``, never on a whole second: the client writes a
    datetime without microseconds as RFC 3339 without a fraction, which the API server refuses
    for a MicroTime (400: cannot parse "+00:00" as ".000000"; measured on 1.33)."""
    now = datetime.now(UTC)
    return now if now.microsecond else now.replace(microsecond=1)


class LeaderElector:
    """Leader election for one identity on the Lease ``namespace``/``name``."""

    def __init__(
        self,
        leases: LeaseApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        timings: Timings,
        on_lost: Callable[[str], None],
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = stamp_now,
    ) -> None:
        self._leases = leases
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timings = timings
        self._on_lost = on_lost
        self._timeout = request_timeout
        self._clock = clock
        self._wall = wall
        self._observed: Observation | None = None
        self._version: str | None = None
        """``resourceVersion`` of the Lease as last read (None: it did not exist)."""
        self._leading = False
        self._renewed_at = 0.0
        """When the last successful write was sent (our clock): the renew deadline runs from
        there, which is no later than when the others saw it."""
        self._heartbeat = clock()
        self._stop = threading.Event()
        self._lost = threading.Lock()
        self._threads: list[threading.Thread] = []
        LEADING.set(0)

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def leading(self) -> bool:
        return self._leading

    @property
    def holder(self) -> str:
        """The holder as last read ("" for nobody)."""
        record = self._observed.record if self._observed else None
        return record.holder if record else ""

    def alive(self) -> bool:
        """Whether the election loop made an attempt lately: one attempt is two requests of at
        most ``request_timeout`` each, then a wait of at most a retry period."""
        stale_after = 2 * self._timeout + 2 * self.timings.retry_period
        return self._clock() - self._heartbeat < stale_after

    # --- standing by -------------------------------------------------------------------------

    def acquire(self, stop: threading.Event) -> bool:
        """Try every retry period (sooner when the holder's Lease expires sooner) until this
        process holds the Lease (True) or ``stop`` is set (False)."""
        log.info("standing by for the Lease %s as %s", self.where, self.identity)
        last_holder: str | None = None
        while not stop.is_set():
            started = self._clock()
            outcome, retry_in = self.attempt()
            if outcome is Outcome.HOLDING:
                self._lead(started)
                return True
            if outcome is Outcome.HELD_ELSEWHERE and self.holder and self.holder != last_holder:
                last_holder = self.holder
                log.info("the Lease %s is held by %s; standing by", self.where, self.holder)
            stop.wait(retry_in)
        return False

    def attempt(self) -> tuple[Outcome, float]:
        """One read and, where the policy says so, one write; the outcome and the seconds until
        the next attempt."""
        self._heartbeat = self._clock()
        retry = self.timings.retry_period
        try:
            record = self._read()
        except _API_ERRORS as error:
            log.warning("could not read the Lease %s: %s", self.where, _short(error))
            return Outcome.FAILED, retry
        now = self._clock()
        self._observed = observe(self._observed, record, now)
        decision = decide(self._observed, self.identity, now, self._wall(), self.timings)
        if decision.action is Action.STANDBY:
            return Outcome.HELD_ELSEWHERE, decision.retry_in
        if self._leading and decision.action is not Action.RENEW:
            # Not ours any more while we led: someone took it; never take it back.
            return Outcome.HELD_ELSEWHERE, retry
        assert decision.record is not None
        try:
            self._write(decision.action, decision.record)
        except client.ApiException as error:
            if error.status == CONFLICT:
                log.info("lost the race for the Lease %s (%s)", self.where, error.reason)
                return Outcome.HELD_ELSEWHERE, retry
            log.warning("could not write the Lease %s: %s", self.where, _short(error))
            return Outcome.FAILED, retry
        except _API_ERRORS as error:
            log.warning("could not write the Lease %s: %s", self.where, _short(error))
            return Outcome.FAILED, retry
        if decision.action is not Action.RENEW:
            log.info(
                "acquired the Lease %s as %s (%s, transitions %d)",
                self.where,
                self.identity,
                decision.action.value,
                decision.record.transitions,
            )
        return Outcome.HOLDING, decision.retry_in

    # --- leading -----------------------------------------------------------------------------

    def _lead(self, renewed_at: float) -> None:
        self._leading = True
        self._renewed_at = renewed_at
        LEADING.set(1)

    def start_renewing(self) -> None:
        """Renew every retry period in a thread; a watchdog calls ``on_lost`` at the renew
        deadline, even while a renewal hangs in a request."""
        assert self._leading, "acquire() first"
        self._threads = [
            threading.Thread(target=self._renew, name="lease renewer", daemon=True),
            threading.Thread(target=self._watch_deadline, name="lease deadline", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _renew(self) -> None:
        retry_in = self.timings.retry_period
        while not self._stop.wait(retry_in) and self._leading:
            started = self._clock()
            try:
                outcome, retry_in = self.attempt()
            except Exception:  # a bug: say so and let the others lead
                log.exception("the Lease renewer failed")
                self._lose("the Lease renewer failed")
                return
            if outcome is Outcome.HOLDING:
                self._renewed_at = started
            elif outcome is Outcome.HELD_ELSEWHERE:
                self._lose(f"the Lease is held by {self.holder or 'nobody'} now")
                return

    def _watch_deadline(self) -> None:
        while not self._stop.is_set():
            now = self._clock()
            if must_stop_leading(self._renewed_at, now, self.timings):
                self._lose(f"could not renew it for {self.timings.renew_deadline:g} s")
                return
            self._stop.wait(self._renewed_at + self.timings.renew_deadline - now)

    def _lose(self, reason: str) -> None:
        with self._lost:
            if not self._leading or self._stop.is_set():
                return
            self._leading = False
            LEADING.set(0)
        log.error("lost the Lease %s: %s", self.where, reason)
        self._on_lost(reason)

    def release(self) -> None:
        """Stop renewing and, if we still hold the Lease, write it as held by nobody, so that a
        standby takes it at its next attempt instead of waiting for it to expire."""
        with self._lost:
            self._stop.set()
            was_leading, self._leading = self._leading, False
        for thread in self._threads:
            thread.join(timeout=2 * self._timeout)
        LEADING.set(0)
        if not was_leading:
            return
        try:
            record = self._read()
            if record is None or record.holder != self.identity:
                log.info(
                    "not releasing the Lease %s: held by %s", self.where, record and record.holder
                )
                return
            self._write(Action.RENEW, released(record, self._wall()))
        except _API_ERRORS as error:
            log.warning(
                "could not release the Lease %s (it expires in %g s instead): %s",
                self.where,
                self.timings.lease_duration,
                _short(error),
            )
            return
        log.info("released the Lease %s", self.where)

    # --- the API -----------------------------------------------------------------------------

    def _read(self) -> LeaseRecord | None:
        try:
            lease = self._leases.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._timeout
            )
        except client.ApiException as error:
            if error.status == NOT_FOUND:
                self._version = None
                return None
            raise
        assert lease.metadata is not None  # the API server always sends it
        self._version = lease.metadata.resource_version
        spec = lease.spec or client.V1LeaseSpec()
        return LeaseRecord(
            holder=spec.holder_identity or "",
            lease_duration_seconds=spec.lease_duration_seconds or 0,
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            transitions=spec.lease_transitions or 0,
        )

    def _write(self, action: Action, record: LeaseRecord) -> None:
        """Create the Lease, or replace it at the version read (a 409 if it changed since)."""
        body = client.V1Lease(
            api_version="coordination.k8s.io/v1",
            kind="Lease",
            metadata=client.V1ObjectMeta(
                name=self.name, namespace=self.namespace, resource_version=self._version
            ),
            spec=client.V1LeaseSpec(
                holder_identity=record.holder or None,
                lease_duration_seconds=record.lease_duration_seconds,
                acquire_time=record.acquire_time,
                renew_time=record.renew_time,
                lease_transitions=record.transitions,
            ),
        )
        if action is Action.CREATE:
            written = self._leases.create_namespaced_lease(
                self.namespace, body, _request_timeout=self._timeout
            )
        else:
            written = self._leases.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=self._timeout
            )
        assert written.metadata is not None
        self._version = written.metadata.resource_version
        # What we wrote is what the others now see: it expires a lease duration from now.
        self._observed = Observation(record, self._clock())


def _short(error: BaseException) -> str:
    if isinstance(error, client.ApiException):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"


class StandbyHealth:
    """``/healthz`` while the process stands by: 200 (and who holds the Lease) while the
    election loop is alive, else 503, so that the kubelet restarts a standby whose loop hangs
    but not one that merely waits. Kopf serves the same port once this process leads."""

    def __init__(self, port: int, elector: LeaderElector, host: str = "0.0.0.0") -> None:
        self._elector = elector

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/healthz":
                    self.send_error(404)
                    return
                ok = elector.alive()
                state: dict[str, Any] = {
                    "standby": True,
                    "identity": elector.identity,
                    "holder": elector.holder,
                }
                body = json.dumps(state).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Probes every few seconds are no news."""

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="standby healthz", daemon=True
        )

    def __enter__(self) -> StandbyHealth:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop serving and free the port for Kopf's own endpoint."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
