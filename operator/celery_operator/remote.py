"""The one adapter through which the operator asks Celery workers how they are (remote control).

One monitoring cycle is one broadcast each of ``ping``, ``stats`` and ``active``: three messages
published to the pidbox fanout, each delivered once to each worker on the broker, each answered
only by the workers it is addressed to (``destination``). The cost grows with the number of
workers, not with its square (as it would if every worker were probed on its own). With
``limit`` set to the number of workers addressed, a cycle in which everybody answers returns as
soon as the last reply is in, instead of waiting out the timeout.

The calls block (kombu I/O): callers run them in a thread, never on Kopf's event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from celery import Celery
from kombu import pools
from kombu.exceptions import OperationalError
from kombu.utils.collections import eqhash

from celery_operator.health import Reply
from celery_operator.queues import KeyScheme

CONNECT_ATTEMPTS: Final = 1
"""Attempts to reach the broker before a cycle gives up: a monitor must not wait on a broker that
is down, it must say so (and restart nobody)."""


BROKER_ERRORS: Final[tuple[type[BaseException], ...]] = (OperationalError, OSError)
"""What kombu raises when it cannot connect (OSError covers refused and timed-out sockets)."""


class WorkersUnreachable(Exception):  # noqa: N818 (a state, named as the callers read it)
    """The broker could not be reached, so no worker could be asked."""


def control_app(
    url: str,
    keys: KeyScheme,
    *,
    timeout: float,
    master_name: str = "",
    use_ssl: Mapping[str, Any] | None = None,
) -> Celery:
    """A Celery app used only to broadcast, with the workers' transport options: with a
    ``global_keyprefix`` even the pidbox channels are prefixed; behind Sentinel,
    ``master_name`` names the master. ``use_ssl`` is Celery's ``broker_use_ssl`` for a TLS
    broker (the CA to verify it with)."""
    app = Celery("celery-operator-monitor", broker=url, set_as_current=False)
    options: dict[str, Any] = {
        "priority_steps": list(keys.priority_steps),
        "sep": keys.separator,
    }
    if keys.global_keyprefix:
        options["global_keyprefix"] = keys.global_keyprefix
    if master_name:
        options["master_name"] = master_name
    app.conf.update(
        broker_transport_options=options,
        broker_connection_timeout=timeout,
        broker_connection_retry=False,
        broker_connection_max_retries=CONNECT_ATTEMPTS,
    )
    if use_ssl is not None:
        app.conf.broker_use_ssl = dict(use_ssl)
    return app


def close_control_app(app: Celery) -> None:
    """Close every connection ``app`` made, for good.

    Broadcasts publish through kombu's process-wide pools (``kombu.pools.producers`` and
    ``connections``, keyed by the connection's parameters), which ``Celery.close()`` leaves
    open and nothing ever removes: every broker the operator stopped using would keep its
    connections for the life of the process. They are closed and dropped here.
    """
    connection = app.connection_for_write()
    key = eqhash(connection)  # type: ignore[no-untyped-call]
    for group in (pools.producers, pools.connections):
        pool = dict.pop(group, key, None)  # PoolGroup is a dict keyed by eqhash
        if pool is not None:
            pool.force_close_all()
    connection.release()
    if app._pool is not None:  # Celery's own pool, when anything used app.pool
        app._pool.force_close_all()
    app.close()


def census(
    app: Celery, nodes: Sequence[str], *, timeout: float, connection: Any = None
) -> dict[str, Reply]:
    """The reply of each of ``nodes`` that answered, by node name. Raises WorkersUnreachable
    without a broker.

    Every broadcast is addressed to ``nodes`` with ``limit`` = their count: workers of other
    clusters, pools that are not watched, and workers outside Kubernetes on the same broker
    receive it but do not answer, so they can neither fill the limit nor cost us their replies.
    A worker counts as answering when it replied to ping; ``stats`` and ``active`` then go to
    the workers that did, and ``processed`` and ``slots`` are None when its ``stats`` reply was
    late.
    """
    if not nodes:
        return {}
    try:
        with _connected(app, connection, timeout) as conn:
            pings = _ask(app, conn, nodes, timeout, "ping")
            # Only the workers that answered ping are waited for next: a silent worker costs
            # one timeout per cycle, not three.
            answered = sorted(node for node in pings if node in set(nodes))
            stats = _ask(app, conn, answered, timeout, "stats")
            active = _ask(app, conn, answered, timeout, "active")
    except BROKER_ERRORS + _connection_errors(app) as error:
        raise WorkersUnreachable(f"cannot reach the broker: {error}") from error
    return {node: _reply(stats.get(node), active.get(node)) for node in answered}


def tasks_in_hand(
    app: Celery, nodes: Sequence[str], *, timeout: float, connection: Any = None
) -> dict[str, tuple[int, int]]:
    """(running, prefetched) task counts of each of ``nodes`` that answered ``active`` and
    ``reserved``; a node missing from the result did not answer one of them in time.

    Two broadcasts addressed to ``nodes`` (every worker receives them, only those answer), each
    returning as soon as all of them have. Raises WorkersUnreachable without a broker.
    """
    if not nodes:
        return {}
    try:
        with _connected(app, connection, timeout) as conn:
            active = _ask(app, conn, nodes, timeout, "active")
            reserved = _ask(app, conn, nodes, timeout, "reserved")
    except BROKER_ERRORS + _connection_errors(app) as error:
        raise WorkersUnreachable(f"cannot reach the broker: {error}") from error
    return {
        node: (len(active[node] or []), len(reserved[node] or []))
        for node in nodes
        if node in active and node in reserved
    }


@contextlib.contextmanager
def _connected(app: Celery, connection: Any, timeout: float) -> Iterator[Any]:
    """``connection`` (a caller's long-lived one, left open), or a new one closed after use."""
    if connection is not None:
        connection.ensure_connection(max_retries=CONNECT_ATTEMPTS, timeout=timeout)
        yield connection
        return
    with app.connection_for_write() as fresh:
        fresh.ensure_connection(max_retries=CONNECT_ATTEMPTS, timeout=timeout)
        yield fresh


def _ask(
    app: Celery, connection: Any, nodes: Sequence[str], timeout: float, method: str
) -> dict[str, Any]:
    """One inspect broadcast addressed to ``nodes``: their replies by node name.

    Replies that arrive after the limit or the timeout carry an old ticket: kombu keeps each in
    ``Mailbox.unclaimed`` for a ticket that is never asked for again, so they are dropped here
    after every call instead of piling up for the life of the process.
    """
    if not nodes:
        return {}
    inspect = app.control.inspect(
        timeout=timeout, limit=len(nodes), destination=list(nodes), connection=connection
    )
    try:
        replies: dict[str, Any] = getattr(inspect, method)() or {}
    finally:
        app.control.mailbox.unclaimed.clear()
    return replies


def _connection_errors(app: Celery) -> tuple[type[BaseException], ...]:
    """The transport's own connection errors (redis-py's, for Redis), which kombu may let
    through unwrapped."""
    errors: tuple[type[BaseException], ...] = app.connection_for_write().connection_errors
    return errors


def _reply(stats: Mapping[str, Any] | None, active: Any) -> Reply:
    processed = slots = None
    if isinstance(stats, Mapping):
        totals = stats.get("total")
        if isinstance(totals, Mapping):
            processed = sum(int(n) for n in totals.values())
        pool = stats.get("pool")
        if isinstance(pool, Mapping) and isinstance(pool.get("max-concurrency"), int):
            slots = int(pool["max-concurrency"])
    tasks = frozenset(
        str(task["id"]) for task in (active or []) if isinstance(task, Mapping) and "id" in task
    )
    return Reply(processed=processed, slots=slots, active=tasks)
