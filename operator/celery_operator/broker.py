"""The one adapter through which the operator reads the broker (Redis, as kombu lays it out).

Everything else in the operator gets plain numbers from here, and one exception type,
:class:`BrokerUnavailable`, when the broker cannot be read, so that callers can fail safe (keep
the replicas they have) instead of guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_operator.queues import KeyScheme, delivery_tag, keys_for_queues

SUPPORTED_SCHEMES: Final = ("redis", "rediss")
"""URL schemes of the brokers we can count: plain Redis and Redis over TLS."""

RECONNECT_ATTEMPTS: Final = 1
"""Immediate retries of a command after a connection error or timeout.

One retry, without backoff, replaces a pooled socket that died while Redis restarted; more would
only stretch the time a caller waits on a broker that is down: a read fails within about
``(RECONNECT_ATTEMPTS + 1) * timeout``.
"""


class BrokerUnavailable(Exception):  # noqa: N818 (a state, named as the callers read it)
    """The broker could not be read: unreachable, timed out, refused us, or answered an error."""


def connect(url: str, *, timeout: float, max_connections: int = 2) -> redis.Redis[bytes]:
    """A Redis client for a broker URL whose connects and commands each give up after ``timeout``,
    over a pool of at most ``max_connections`` (a caller that finds them all busy waits up to
    ``timeout`` for one, then gets a connection error).

    The client does not connect until it is first used. It is a plain client: kombu's
    ``global_keyprefix`` is applied by :func:`celery_operator.queues.queue_keys`, not here.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SUPPORTED_SCHEMES:
        # Name the scheme only: the rest of a broker URL may hold a password.
        raise ValueError(
            f"broker URL scheme {scheme!r} is not supported: use redis:// or rediss://"
        )
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), RECONNECT_ATTEMPTS),
    )
    return redis.Redis(connection_pool=pool)


def read_backlog(
    client: redis.Redis[bytes], queues: Sequence[str], scheme: KeyScheme
) -> dict[str, int]:
    """Messages waiting in each queue: the sum of ``LLEN`` over all of its priority lists.

    All lists of all queues are read in one pipelined round trip (no ``MULTI``: the counts are a
    snapshot for scaling, not a transaction). A missing key is an empty list and counts 0.
    Messages already reserved by a worker are not in the lists and are not counted here.
    """
    keys_by_queue = keys_for_queues(queues, scheme)
    pipe = client.pipeline(transaction=False)
    for keys in keys_by_queue.values():
        for key in keys:
            pipe.llen(key)
    try:
        lengths = iter(pipe.execute())
    except redis.RedisError as error:
        raise BrokerUnavailable(f"cannot read queue lengths: {error}") from error
    return {queue: sum(int(next(lengths)) for _ in keys) for queue, keys in keys_by_queue.items()}


def read_heads(
    client: redis.Redis[bytes], queues: Sequence[str], scheme: KeyScheme
) -> dict[str, tuple[str | None, ...]]:
    """The delivery tag of the oldest message (the right end) of each priority list of each
    queue, None for an empty list; one pipelined round trip of ``LINDEX key -1``.

    This reads whole messages, so it runs with the reconcile (every 15 s), not every poll.
    """
    keys_by_queue = keys_for_queues(queues, scheme)
    pipe = client.pipeline(transaction=False)
    for keys in keys_by_queue.values():
        for key in keys:
            pipe.lindex(key, -1)
    try:
        heads = iter(pipe.execute())
    except redis.RedisError as error:
        raise BrokerUnavailable(f"cannot read the queues' oldest messages: {error}") from error
    return {
        queue: tuple(delivery_tag(next(heads)) for _ in keys)
        for queue, keys in keys_by_queue.items()
    }


BEAT_TICK_KEY: Final = "celery-operator:beat:last-tick"
"""Where beat, run through ``celery-probe run``, announces its last tick (Unix time), after the
``global_keyprefix``; the same key as ``celery_probes.state.BEAT_TICK_KEY``."""


def read_beat_tick(client: redis.Redis[bytes], scheme: KeyScheme) -> float | None:
    """When beat last ticked (its own clock, Unix time), or None when it never said so."""
    try:
        raw = client.get(f"{scheme.global_keyprefix}{BEAT_TICK_KEY}")
    except redis.RedisError as error:
        raise BrokerUnavailable(f"cannot read beat's last tick: {error}") from error
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
