"""The one adapter through which the operator reads the broker (Redis, as kombu lays it out).

Everything else in the operator gets plain numbers from here, and one exception type,
:class:`BrokerUnavailable`, when the broker cannot be read, so that callers can fail safe (keep
the replicas they have) instead of guessing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from celery_operator import brokerurl
from celery_operator.queues import KeyScheme, QueueLoad, delivery_tag, keys_for_queues

SUPPORTED_SCHEMES: Final = ("redis", "rediss", "sentinel")
"""URL schemes of the Redis brokers we can count: plain, over TLS, and behind Sentinel."""

KIND: Final = "redis"
""":attr:`RedisQueues.kind`, as status and ``kubectl get -o wide`` show it."""
SENTINEL_KIND: Final = "redis-sentinel"

RECONNECT_ATTEMPTS: Final = 1
"""Immediate retries of a command after a connection error or timeout.

One retry, without backoff, replaces a pooled socket that died while Redis restarted (or, behind
Sentinel, asks the sentinels for the new master after a failover); more would only stretch the
time a caller waits on a broker that is down: a read fails within about
``(RECONNECT_ATTEMPTS + 1) * timeout``.
"""

CERT_REQS: Final[Mapping[str, str]] = {
    "required": "required", "cert_required": "required",
    "optional": "optional", "cert_optional": "optional",
    "none": "none", "cert_none": "none",
}  # fmt: skip
"""``ssl_cert_reqs`` as Celery documents it (``required``, ``CERT_REQUIRED``, ...), in the words
redis-py takes."""


class BrokerUnavailable(Exception):  # noqa: N818 (a state, named as the callers read it)
    """The broker could not be read: unreachable, timed out, refused us, or answered an error."""


def connect(
    url: str,
    *,
    timeout: float,
    max_connections: int = 2,
    ca_data: str | None = None,
    master_name: str = "",
) -> redis.Redis[bytes]:
    """A Redis client for a broker URL whose connects and commands each give up after ``timeout``,
    over a pool of at most ``max_connections`` (a caller that finds them all busy waits up to
    ``timeout`` for one, then gets a connection error).

    ``rediss://`` verifies the server's certificate (unless the URL's ``ssl_cert_reqs`` says
    otherwise) with ``ca_data`` (PEM text) when given, else with the URL's ``ssl_ca_certs`` or
    the system's CAs. ``sentinel://`` (a ``;`` list of sentinels) asks the sentinels for
    ``master_name``'s address, and again after a failover, as kombu does; the URL's password is
    the master's, as kombu reads it.

    The client does not connect until it is first used. It is a plain client: kombu's
    ``global_keyprefix`` is applied by :func:`celery_operator.queues.queue_keys`, not here.
    Raises brokerurl.BrokerUrlError for a URL that cannot be used (its text quotes none of it).
    """
    address = brokerurl.parse(url)
    brokerurl.check_supported(address, SUPPORTED_SCHEMES)
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), RECONNECT_ATTEMPTS),
        "db": address.database or 0,
        "username": address.username,
        "password": address.password,
        **redis_tls(address, ca_data),
    }
    if address.scheme == "sentinel":
        if not master_name:
            raise brokerurl.BrokerUrlError(
                brokerurl.UNSUPPORTED_SCHEME, "a sentinel:// broker needs its master name"
            )
        sentinels = Sentinel(
            list(address.hosts),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        # redis-py has no blocking Sentinel pool: a caller that finds all connections busy gets
        # a connection error at once, which callers take as "unreadable this time".
        client: redis.Redis[bytes] = sentinels.master_for(
            master_name, max_connections=max_connections, **common
        )
        return client
    host, port = address.hosts[0]
    if address.tls:
        common["connection_class"] = redis.SSLConnection
    pool = redis.BlockingConnectionPool(
        host=host, port=port, max_connections=max_connections, timeout=timeout, **common
    )
    return redis.Redis(connection_pool=pool)


def redis_tls(address: brokerurl.BrokerAddress, ca_data: str | None) -> dict[str, Any]:
    """redis-py's TLS arguments for a ``rediss://`` URL (none for another), from the URL's
    query as Celery documents it; also kombu's ``broker_use_ssl`` for the same broker."""
    if not address.tls:
        return {}
    query = address.query
    reqs = CERT_REQS.get(query.get("ssl_cert_reqs", "required").lower())
    if reqs is None:
        raise brokerurl.BrokerUrlError(
            brokerurl.UNPARSEABLE,
            "ssl_cert_reqs in the URL must be required, optional or none (or CERT_REQUIRED, ...)",
        )
    options: dict[str, Any] = {
        "ssl_cert_reqs": reqs,
        "ssl_check_hostname": reqs != "none"
        and query.get("ssl_check_hostname", "true").lower() != "false",
    }
    if ca_data is not None:
        options["ssl_ca_data"] = ca_data
    elif query.get("ssl_ca_certs"):
        options["ssl_ca_certs"] = query["ssl_ca_certs"]
    return options


class RedisQueues:
    """A Redis broker's queues, as :class:`celery_operator.brokers.Broker` reads them."""

    def __init__(
        self,
        url: str,
        keys: KeyScheme,
        *,
        timeout: float,
        max_connections: int,
        ca_data: str | None = None,
        master_name: str = "",
    ) -> None:
        self.client = connect(
            url,
            timeout=timeout,
            max_connections=max_connections,
            ca_data=ca_data,
            master_name=master_name,
        )
        self.keys = keys
        self.kind = SENTINEL_KIND if master_name else KIND
        self.counting = "queue lengths read from Redis (every priority list)"

    def loads(self, queues: Sequence[str]) -> dict[str, QueueLoad]:
        """Messages waiting; what workers hold is not in the lists (``in_flight`` None)."""
        return {
            queue: QueueLoad(waiting=count, in_flight=None, consumers=None, source=KIND)
            for queue, count in read_backlog(self.client, queues, self.keys).items()
        }

    def heads(self, queues: Sequence[str]) -> dict[str, tuple[str | None, ...]]:
        return read_heads(self.client, queues, self.keys)

    def beat_tick(self) -> float | None:
        return read_beat_tick(self.client, self.keys)

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()


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
