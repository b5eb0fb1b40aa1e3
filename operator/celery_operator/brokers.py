"""One object per distinct broker, shared by every CeleryCluster that uses it.

A broker is a URL plus the transport options that name its keys (``global_keyprefix`` even
prefixes the pidbox and event channels). Whatever the operator holds to talk to a broker lives in
its :class:`Broker`, never per cluster: one Redis connection pool, one remote-control client with
one connection, one event receiver thread, one backlog poller thread. Clusters attach to it
(reference-counted by cluster) and detach when they are deleted or change broker; the last one
to go closes it. So threads and connections grow with the number of brokers, not of clusters.

What is shared, and how:

* **Backlog polls.** Every autoscaled cluster *watches* its queues; the broker's poller thread
  reads every watched queue of every cluster in one pipelined round trip per poll interval (the
  shortest any watcher asks for) and wakes the clusters whose counts changed. An idle pool at
  zero therefore costs one ``LLEN`` per list per second in a shared pipeline, and nothing else.
* **Remote control** (``ping``/``stats``/``active``, ``active``/``reserved``): one call at a
  time per broker over one held connection, each addressed to the nodes asked for. Callers that
  arrive while a call runs are served together by the next one, addressed to all their nodes,
  and each gets the replies of its own nodes.
* **Events**: one receiver that routes each event to its cluster (:mod:`eventstream`).

Texts derived from broker errors are redacted before they leave this module.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from celery_operator import broker, brokerurl, rabbitmq, remote
from celery_operator.eventstream import BrokerEvents
from celery_operator.health import Reply
from celery_operator.queues import KeyScheme, QueueLoad

log = logging.getLogger(__name__)

ClusterKey = tuple[str, str]
"""(namespace, name) of a CeleryCluster."""

REDIS_CONNECTIONS: Final = 3
"""Connections in a broker's Redis pool: the poller's and two for reconciles reading at once.
A reconcile that finds all three in use waits (at most the broker timeout) for one."""
IDLE_WAIT_SECONDS: Final = 5.0
"""How long the poller sleeps when nobody watches (it is woken when someone starts)."""


@dataclass(frozen=True)
class BrokerKey:
    """What makes two clusters' brokers the same one: where the URL points and with which
    credentials (:func:`brokerurl.identity`), the key scheme, and what else reaching it takes
    (Sentinel's master name, the CA bundle, RabbitMQ's management API). ``url`` is the one to
    connect with; two URLs of one identity (``redis://h/0``, ``redis://h:6379/0``) share a
    broker."""

    url: str = field(repr=False, compare=False)
    identity: brokerurl.BrokerIdentity
    keys: KeyScheme = field(default_factory=KeyScheme)
    master_name: str = ""
    ca_data: str | None = field(default=None, repr=False)
    management: rabbitmq.ManagementApi | None = None

    @classmethod
    def of(
        cls,
        url: str,
        keys: KeyScheme,
        *,
        master_name: str = "",
        ca_data: str | None = None,
        management: rabbitmq.ManagementApi | None = None,
    ) -> BrokerKey:
        """Raises brokerurl.BrokerUrlError for a URL that cannot be used."""
        address = brokerurl.parse(url)
        return cls(address.url, brokerurl.identity(address), keys, master_name, ca_data, management)

    @property
    def amqp(self) -> bool:
        return self.identity.scheme in brokerurl.AMQP_SCHEMES


class QueueSource(Protocol):
    """How a broker's queues are read: :class:`broker.RedisQueues`,
    :class:`rabbitmq.RabbitQueues`. Every method raises broker.BrokerUnavailable."""

    kind: str
    """``redis``, ``redis-sentinel`` or ``rabbitmq``: what status shows."""
    counting: str
    """What the counts are and where they come from, for the BrokerReachable condition."""

    def loads(self, queues: Sequence[str]) -> Mapping[str, QueueLoad]: ...

    def heads(self, queues: Sequence[str]) -> Mapping[str, Sequence[str | None]]: ...

    def beat_tick(self) -> float | None: ...

    def close(self) -> None: ...


def _celery_tls(key: BrokerKey) -> Mapping[str, Any] | None:
    """Celery's ``broker_use_ssl`` for a TLS broker: verify it as the queue reads do."""
    address = brokerurl.parse(key.url)
    if not address.tls:
        return None
    if key.amqp:
        tls: Mapping[str, Any] = rabbitmq.amqp_tls(address, None, key.ca_data)
        return tls
    return broker.redis_tls(address, key.ca_data)


def queue_source(key: BrokerKey, *, timeout: float, connections: int) -> QueueSource:
    """The reader for ``key``'s kind of broker."""
    if key.amqp:
        return rabbitmq.RabbitQueues(
            key.url, timeout=timeout, management=key.management, ca_data=key.ca_data
        )
    return broker.RedisQueues(
        key.url,
        key.keys,
        timeout=timeout,
        max_connections=connections,
        ca_data=key.ca_data,
        master_name=key.master_name,
    )


@dataclass(frozen=True)
class Backlog:
    """The last poll of a broker's watched queues."""

    at: float
    """When it was read (the poller's monotonic clock)."""
    counts: Mapping[str, int] | None
    """Messages waiting per queue; None when the broker could not be read."""
    in_flight: Mapping[str, int] | None = None
    """Messages delivered to workers and not acknowledged, per queue, where the broker tells
    (RabbitMQ's management API); else None."""
    error: str | None = None
    """Why it could not be read (redacted)."""


class SharedBroker(Protocol):
    """What the reconcile, the autoscaler and the monitor use of a broker (:class:`Broker`;
    unit tests give a scripted one)."""

    name: str
    kind: str
    counting: str

    def read_loads(self, queues: Sequence[str]) -> Mapping[str, QueueLoad]: ...

    def read_heads(self, queues: Sequence[str]) -> Mapping[str, Sequence[str | None]]: ...

    def read_beat_tick(self) -> float | None: ...

    def watch(
        self, cluster: ClusterKey, queues: Iterable[str], interval: float, wake: Callable[[], None]
    ) -> None: ...

    def unwatch(self, cluster: ClusterKey) -> None: ...

    def backlog(self) -> Backlog | None: ...

    def census(self, nodes: Sequence[str]) -> Mapping[str, Reply]: ...

    def tasks_in_hand(self, nodes: Sequence[str]) -> Mapping[str, tuple[int, int]]: ...

    def subscribe_events(self, cluster: ClusterKey, pool_of_queue: Mapping[str, str]) -> None: ...

    def claim_nodes(self, cluster: ClusterKey, nodes: Iterable[str]) -> None: ...

    def workers_online(self, cluster: ClusterKey) -> Mapping[str, int]: ...

    def release(self, cluster: ClusterKey) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Watch:
    queues: frozenset[str]
    interval: float
    wake: Callable[[], None]
    last: tuple[tuple[str, int], ...] | str | None = None
    """What this watcher was last woken for: its counts, or the error."""


@dataclass
class _Batch:
    """Callers of one remote-control call, gathered while the previous call ran."""

    nodes: set[str] = field(default_factory=set)
    done: threading.Event = field(default_factory=threading.Event)
    result: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


class Broker:
    """Everything the operator holds for one broker (see the module docstring)."""

    def __init__(
        self,
        key: BrokerKey,
        *,
        timeout: float,
        census_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self.name = brokerurl.parse(key.url).display
        """How logs and thread names call it: scheme, host and port, never credentials."""
        self.timeout = timeout
        self.census_timeout = census_timeout
        self.clock = clock
        self.queues = queue_source(key, timeout=timeout, connections=REDIS_CONNECTIONS)
        self.kind = self.queues.kind
        self.counting = self.queues.counting
        tls = _celery_tls(key)
        self.control = remote.control_app(
            brokerurl.without_tls_query(key.url) if tls is not None else key.url,
            key.keys,
            timeout=census_timeout,
            master_name=key.master_name,
            use_ssl=tls,
        )
        self.events = BrokerEvents(self.control, self.name)
        self.calls = 0
        """Remote-control calls made (each one broadcast per method, however many asked)."""
        self._lock = threading.Lock()
        self._watches: dict[ClusterKey, _Watch] = {}
        self._backlog: Backlog | None = None
        self._poller: threading.Thread | None = None
        self._poke = threading.Event()
        self._stopping = threading.Event()
        self._control_lock = threading.Lock()
        self._control_conn: Any = None
        self._gathering: dict[str, _Batch] = {}

    # --- reads for the reconcile (through the shared pool) --------------------------------

    def read_loads(self, queues: Sequence[str]) -> Mapping[str, QueueLoad]:
        with self._redacted():
            return self.queues.loads(queues)

    def read_heads(self, queues: Sequence[str]) -> Mapping[str, Sequence[str | None]]:
        with self._redacted():
            return self.queues.heads(queues)

    def read_beat_tick(self) -> float | None:
        with self._redacted():
            return self.queues.beat_tick()

    @contextlib.contextmanager
    def _redacted(self) -> Iterator[None]:
        """A broker error leaves with its text redacted (and without its cause, whose text a
        traceback would print). A closed broker reads nothing: a read would open a connection
        that nobody closes."""
        if self._stopping.is_set():
            raise broker.BrokerUnavailable(f"{self.name} is no longer used by any cluster")
        try:
            yield
        except broker.BrokerUnavailable as error:
            raise broker.BrokerUnavailable(brokerurl.redact(str(error), self.key.url)) from None

    # --- shared backlog polls --------------------------------------------------------------

    def watch(
        self, cluster: ClusterKey, queues: Iterable[str], interval: float, wake: Callable[[], None]
    ) -> None:
        """Poll ``queues`` at least every ``interval`` seconds and call ``wake`` (from the
        poller's thread) whenever their counts or the broker's readability change."""
        wanted = frozenset(queues)
        with self._lock:
            current = self._watches.get(cluster)
            if current is not None and (current.queues, current.interval) == (wanted, interval):
                current.wake = wake
                return
            self._watches[cluster] = _Watch(wanted, interval, wake)
            if self._poller is None:
                self._poller = threading.Thread(
                    target=self._poll_forever, name=f"backlog {self.name}", daemon=True
                )
                self._poller.start()
        self._poke.set()  # a new watcher is read at once

    def unwatch(self, cluster: ClusterKey) -> None:
        with self._lock:
            self._watches.pop(cluster, None)

    def backlog(self) -> Backlog | None:
        """The last poll (of every watched queue); None before the first."""
        with self._lock:
            return self._backlog

    def poll_once(self) -> None:
        """Read every watched queue in one pipeline and wake the watchers it concerns."""
        with self._lock:
            watches = list(self._watches.values())
        queues = sorted({q for w in watches for q in w.queues})
        if not queues:
            return
        counts: Mapping[str, int] | None = None
        in_flight: dict[str, int] | None = None
        error = None
        try:
            loads = self.read_loads(queues)
        except broker.BrokerUnavailable as failure:
            error = str(failure)
        else:
            counts = {queue: load.waiting for queue, load in loads.items()}
            in_flight = {q: n.in_flight for q, n in loads.items() if n.in_flight is not None}
            if len(in_flight) < len(loads):
                in_flight = None
        reading = Backlog(at=self.clock(), counts=counts, in_flight=in_flight, error=error)
        with self._lock:
            self._backlog = reading
        for watch in watches:
            seen = (
                error
                if counts is None
                else tuple(sorted((q, counts.get(q, 0)) for q in watch.queues))
            )
            if seen != watch.last:
                watch.last = seen
                watch.wake()

    def _poll_forever(self) -> None:
        while not self._stopping.is_set():
            started = self.clock()
            try:
                self.poll_once()
            except Exception:  # never let the shared poller die: log, and poll again
                log.exception("backlog poll of %s failed", self.name)
            with self._lock:
                intervals = [w.interval for w in self._watches.values()]
            pause = min(intervals) if intervals else IDLE_WAIT_SECONDS
            self._poke.wait(max(0.0, pause - (self.clock() - started)))
            self._poke.clear()

    # --- remote control, one call at a time, gathered ------------------------------------

    def census(self, nodes: Sequence[str]) -> Mapping[str, Reply]:
        """ping, stats and active, addressed to ``nodes``; raises remote.WorkersUnreachable."""
        replies: Mapping[str, Reply] = self._gathered("census", nodes)
        return replies

    def tasks_in_hand(self, nodes: Sequence[str]) -> Mapping[str, tuple[int, int]]:
        """(running, prefetched) of each of ``nodes`` that answered; raises
        remote.WorkersUnreachable."""
        held: Mapping[str, tuple[int, int]] = self._gathered("tasks", nodes)
        return held

    def _gathered(self, kind: str, nodes: Sequence[str]) -> Mapping[str, Any]:
        if not nodes:
            return {}
        with self._lock:
            batch = self._gathering.get(kind)
            leader = batch is None
            if batch is None:
                batch = self._gathering[kind] = _Batch()
            batch.nodes.update(nodes)
        if leader:
            with self._control_lock:  # the previous call ends first; joiners gather meanwhile
                with self._lock:
                    del self._gathering[kind]
                try:
                    batch.result = self._call(kind, sorted(batch.nodes))
                except remote.WorkersUnreachable as error:
                    batch.error = brokerurl.redact(str(error), self.key.url)
                finally:
                    batch.done.set()
        else:
            batch.done.wait()
        if batch.error is not None:
            raise remote.WorkersUnreachable(batch.error)
        mine = set(nodes)
        return {node: value for node, value in batch.result.items() if node in mine}

    def _call(self, kind: str, nodes: Sequence[str]) -> Mapping[str, Any]:
        """One remote-control call over the held connection (re-made after a failure). A closed
        broker asks nothing: a late caller (the autoscaler's background question about a
        cluster just deleted) must not open a connection that nobody closes."""
        if self._stopping.is_set():
            raise remote.WorkersUnreachable(f"{self.name} is no longer used by any cluster")
        if self._control_conn is None:
            self._control_conn = self.control.connection_for_write()
        self.calls += 1
        try:
            if kind == "census":
                return remote.census(
                    self.control, nodes, timeout=self.census_timeout, connection=self._control_conn
                )
            return remote.tasks_in_hand(
                self.control, nodes, timeout=self.census_timeout, connection=self._control_conn
            )
        except remote.WorkersUnreachable:
            self._drop_control_connection()
            raise

    def _drop_control_connection(self) -> None:
        conn, self._control_conn = self._control_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as error:  # closing a dead connection may fail: it is gone anyway
                log.debug("closing the control connection of %s: %s", self.name, error)

    # --- events --------------------------------------------------------------------------

    def subscribe_events(self, cluster: ClusterKey, pool_of_queue: Mapping[str, str]) -> None:
        self.events.subscribe(cluster, pool_of_queue)

    def claim_nodes(self, cluster: ClusterKey, nodes: Iterable[str]) -> None:
        self.events.claim(cluster, nodes)

    def workers_online(self, cluster: ClusterKey) -> Mapping[str, int]:
        return self.events.online(cluster)

    # --- life cycle ------------------------------------------------------------------------

    def release(self, cluster: ClusterKey) -> None:
        """Forget everything this broker keeps for ``cluster``."""
        self.unwatch(cluster)
        self.events.unsubscribe(cluster)

    def close(self) -> None:
        """Stop its threads and close its connections (the last cluster went)."""
        self._stopping.set()
        self._poke.set()
        self.events.stop()
        if self._poller is not None:
            self._poller.join(timeout=self.timeout * 2 + 2)
        with self._control_lock:
            self._drop_control_connection()
        remote.close_control_app(self.control)
        self.queues.close()

    @property
    def threads(self) -> int:
        """Threads this broker runs now (the poller, the event receiver)."""
        return sum(1 for alive in (self._poller, self.events) if _alive(alive))


def _alive(thing: threading.Thread | BrokerEvents | None) -> bool:
    if isinstance(thing, BrokerEvents):
        return thing.running
    return thing is not None and thing.is_alive()


BrokerFactory = Callable[[BrokerKey], SharedBroker]


class Brokers:
    """The brokers in use, each shared by the clusters attached to it."""

    def __init__(self, factory: BrokerFactory) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._brokers: dict[BrokerKey, SharedBroker] = {}
        self._users: dict[BrokerKey, set[ClusterKey]] = {}
        self._of: dict[ClusterKey, BrokerKey] = {}

    def attach(self, cluster: ClusterKey, key: BrokerKey) -> SharedBroker:
        """The broker for ``key``, made on first use; ``cluster`` counts as one of its users and
        is detached from the broker it used before, if that was another."""
        with self._lock:
            before = self._of.get(cluster)
            if before == key:
                return self._brokers[key]
        if before is not None:
            self.detach(cluster)
        with self._lock:
            shared = self._brokers.get(key)
            if shared is None:
                shared = self._brokers[key] = self._factory(key)
                self._users[key] = set()
            self._users[key].add(cluster)
            self._of[cluster] = key
            return shared

    def of(self, cluster: ClusterKey) -> SharedBroker | None:
        with self._lock:
            key = self._of.get(cluster)
            return self._brokers.get(key) if key is not None else None

    def detach(self, cluster: ClusterKey) -> None:
        """``cluster`` no longer uses its broker; the broker closes when nobody does."""
        with self._lock:
            key = self._of.pop(cluster, None)
            if key is None:
                return
            shared = self._brokers[key]
            users = self._users[key]
            users.discard(cluster)
            last = not users
            if last:
                del self._brokers[key], self._users[key]
        shared.release(cluster)
        if last:
            shared.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._brokers)

    def users(self) -> int:
        with self._lock:
            return len(self._of)

    def close(self) -> None:
        for cluster in list(self._of):
            self.detach(cluster)
