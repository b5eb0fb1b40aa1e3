"""The shared broker's pure parts: gathering concurrent remote-control callers into one call,
sharing and closing by reference count, and which cluster an event counts for.

Constructing a :class:`Broker` opens nothing (clients connect on first use), and the calls that
would reach the broker are replaced by recording ones, so these tests need no server."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from celery_operator import broker, remote
from celery_operator.brokers import Broker, BrokerKey, Brokers, _Batch
from celery_operator.eventstream import BrokerEvents, cluster_of_pod
from celery_operator.queues import KeyScheme
from tests.unit.fakes import ScriptedBroker

URL = "redis://:p%2Fw@broker.example:6379/0"


class RecordingBroker(Broker):
    """A Broker whose remote-control calls are recorded; the first waits for ``gate``."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(BrokerKey.of(URL, KeyScheme()), timeout=1.0, census_timeout=1.0)
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.asked: list[tuple[str, list[str]]] = []

    def _call(self, kind: str, nodes: Sequence[str]) -> Mapping[str, Any]:
        self.asked.append((kind, list(nodes)))
        assert self.gate.wait(timeout=10)
        if self.fail:
            raise remote.WorkersUnreachable(f"cannot reach the broker: {URL} refused")
        return dict.fromkeys(nodes, (1, 0))


def test_callers_that_come_while_a_call_runs_share_the_next_one() -> None:
    shared = RecordingBroker()
    shared.gate.clear()
    results: dict[str, Mapping[str, Any]] = {}

    def ask(name: str, nodes: list[str]) -> None:
        results[name] = shared.tasks_in_hand(nodes)

    first = threading.Thread(target=ask, args=("first", ["a@p1"]))
    first.start()
    _until(lambda: len(shared.asked) == 1)  # the first call is under way
    later = [
        threading.Thread(target=ask, args=(name, nodes))
        for name, nodes in (("b", ["b@p1", "b@p2"]), ("c", ["c@p1"]), ("b2", ["b@p2"]))
    ]
    for thread in later:
        thread.start()
    _until(lambda: len(shared._gathering.get("tasks", _Batch()).nodes) == 3)
    shared.gate.set()
    for thread in [first, *later]:
        thread.join(timeout=5)
    assert shared.asked == [("tasks", ["a@p1"]), ("tasks", ["b@p1", "b@p2", "c@p1"])]
    # Each caller gets the replies of its own nodes only.
    assert results == {
        "first": {"a@p1": (1, 0)},
        "b": {"b@p1": (1, 0), "b@p2": (1, 0)},
        "c": {"c@p1": (1, 0)},
        "b2": {"b@p2": (1, 0)},
    }
    assert shared.calls == 0  # _call is replaced: nothing was sent


def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_nobody_to_ask_asks_nothing() -> None:
    shared = RecordingBroker()
    assert shared.census([]) == {}
    assert shared.asked == []


def test_an_unreachable_broker_reaches_every_caller_redacted() -> None:
    shared = RecordingBroker(fail=True)
    with pytest.raises(remote.WorkersUnreachable) as caught:
        shared.census(["a@p1"])
    assert "p%2Fw" not in str(caught.value)
    assert "p/w" not in str(caught.value)
    assert "broker.example:6379" in str(caught.value)


def test_a_broker_is_shared_by_reference_and_closed_by_the_last_user() -> None:
    made: list[ScriptedBroker] = []

    def factory(key: BrokerKey) -> ScriptedBroker:
        made.append(ScriptedBroker(key))
        return made[-1]

    brokers = Brokers(factory)
    one = BrokerKey.of("redis://h:6379/0", KeyScheme())
    same = BrokerKey.of("redis://h/0", KeyScheme())
    prefixed = BrokerKey.of("redis://h/0", KeyScheme(global_keyprefix="x:"))
    assert brokers.attach(("ns", "a"), one) is brokers.attach(("ns", "b"), same)
    assert brokers.attach(("ns", "c"), prefixed) is not brokers.of(("ns", "a"))
    assert len(brokers) == 2
    brokers.attach(("ns", "a"), prefixed)  # a moves: it leaves the first broker
    assert made[0].released == [("ns", "a")]
    assert not made[0].closed
    brokers.detach(("ns", "b"))
    assert made[0].closed
    brokers.detach(("ns", "b"))  # twice is harmless
    brokers.close()
    assert made[1].closed
    assert len(brokers) == 0
    assert brokers.users() == 0


@pytest.mark.parametrize(
    ("pod", "pool", "cluster"),
    [
        pytest.param("demo-worker-default-5d8f9c7b4-x2k9q", "default", "demo", id="plain"),
        pytest.param("a-worker-b-worker-c-5d8f9c7b4-x2k9q", "c", "a-worker-b", id="dashes"),
        pytest.param("demo-worker-default-5d8f9c7b4-x2k9q", "other", None, id="other-pool"),
        pytest.param("laptop", "celery", None, id="outside-kubernetes"),
        pytest.param("-worker-default-5d8f9c7b4-x2k9q", "default", None, id="no-cluster"),
    ],
)
def test_a_worker_pod_name_says_its_cluster(pod: str, pool: str, cluster: str | None) -> None:
    assert cluster_of_pod(pod, pool) == cluster


def test_events_count_for_the_cluster_whose_worker_sent_them() -> None:
    events = BrokerEvents(app=None, name="test")  # never started: it needs no app
    a, b, twin = ("ns1", "a"), ("ns1", "b"), ("ns2", "a")
    with events._lock:  # routes without starting the receiver thread
        for key, queue in ((a, "qa"), (b, "qb")):
            events._routes[key] = _route(events, key, queue)

    def targets(event: dict[str, Any]) -> list[tuple[str, str]]:
        keys = {id(route): key for key, route in events._routes.items()}
        return [keys[id(route)] for route in events._targets(event)]

    worker_of_a = {"type": "task-received", "hostname": "p@a-worker-p-5d8f9c7b4-x2k9q"}
    assert targets(worker_of_a) == [a]
    assert targets({"type": "task-sent", "queue": "qb", "hostname": "producer"}) == [b]
    assert targets({"type": "task-received", "hostname": "celery@laptop"}) == []
    with events._lock:
        events._routes[twin] = _route(events, twin, "qa")
    assert targets(worker_of_a) == []  # "a" in two namespaces: only a claim can tell
    events.claim(twin, ["p@a-worker-p-5d8f9c7b4-x2k9q"])
    assert targets(worker_of_a) == [twin]
    events.unsubscribe(twin)
    assert targets(worker_of_a) == [a]  # its claims went with it


def _route(events: BrokerEvents, key: tuple[str, str], queue: str) -> Any:
    from celery_operator.eventstream import _Route, _Sink  # noqa: PLC0415
    from celery_operator.taskevents import TaskEvents  # noqa: PLC0415

    return _Route(TaskEvents(_Sink(*key), {queue: "p"}), frozenset({"p"}), {queue: "p"})


def test_a_closed_broker_asks_and_reads_nothing() -> None:
    """A late caller after the last cluster went (the autoscaler's background question) gets an
    error instead of a connection nobody would close."""
    closed = Broker(BrokerKey.of(URL, KeyScheme()), timeout=1.0, census_timeout=1.0)
    closed.close()
    with pytest.raises(remote.WorkersUnreachable, match="no longer used"):
        closed.census(["a@p1"])
    with pytest.raises(broker.BrokerUnavailable, match="no longer used"):
        closed.read_loads(["q"])
    assert closed._control_conn is None
