"""The shared broker (``brokers.Broker``) against a real Redis and real workers.

Several clusters, and workers outside Kubernetes, share one Redis database: every worker
receives every pidbox broadcast. Each cluster must still count exactly its own workers, late
replies must not pile up in the operator, one poll must serve every cluster's queues, and a
closed broker must leave no thread and no connection behind.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import redis

from celery_operator.brokers import Broker, BrokerKey
from celery_operator.queues import KeyScheme
from celery_operator.remote import WorkersUnreachable
from tests.integration.procs import RedisServer, WorkerFactory, client_app, wait_for

CYCLES = 10


def _broker(url: str, keys: KeyScheme | None = None) -> Broker:
    return Broker(BrokerKey.of(url, keys or KeyScheme()), timeout=2.0, census_timeout=1.0)


def _clients(server: RedisServer, mine: redis.Redis[bytes]) -> int:
    """Connections to the server, besides the one asking."""
    return sum(1 for c in mine.client_list() if int(c["id"]) != mine.client_id())


def test_each_cluster_counts_its_own_workers_among_others_on_one_broker(
    redis_server: RedisServer, celery_worker: WorkerFactory
) -> None:
    cluster_a = [celery_worker("-Q", "qa", "-c", "1", name=f"a{i}").node for i in range(3)]
    cluster_b = [celery_worker("-Q", "qb", "-c", "1", name=f"b{i}").node for i in range(3)]
    outside = celery_worker("-Q", "celery", "-c", "1", name="outside")  # not ours at all
    shared = _broker(redis_server.url)
    try:
        for _ in range(CYCLES):
            assert set(shared.census(cluster_a)) == set(cluster_a)
            assert set(shared.census(cluster_b)) == set(cluster_b)
            assert shared.control.control.mailbox.unclaimed == {}
        assert outside.node not in shared.census([*cluster_a, outside.node][:3])
        # Two clusters asking at the same time are served by calls addressed to both.
        answers: dict[str, set[str]] = {}
        threads = [
            threading.Thread(target=lambda n=n, c=c: answers.update({n: set(shared.census(c))}))
            for n, c in (("a", cluster_a), ("b", cluster_b))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert answers == {"a": set(cluster_a), "b": set(cluster_b)}
    finally:
        shared.close()


def test_late_replies_are_dropped_not_kept(
    redis_server: RedisServer, celery_worker: WorkerFactory
) -> None:
    """A frozen worker answers after the census gave up on it: its late replies reach the next
    call's reply queue with an old ticket, and must be dropped, not kept for ever."""
    quick = celery_worker("-Q", "q", "-c", "1", name="quick")
    slow = celery_worker("-Q", "q", "-c", "1", name="slow")
    shared = _broker(redis_server.url)
    try:
        for _ in range(3):
            os.kill(slow.proc.pid, signal.SIGSTOP)
            try:
                assert set(shared.census([quick.node, slow.node])) == {quick.node}
            finally:
                os.kill(slow.proc.pid, signal.SIGCONT)
            time.sleep(1.0)  # its ping, stats and active replies arrive now, too late
        assert set(shared.census([quick.node, slow.node])) == {quick.node, slow.node}
        assert shared.control.control.mailbox.unclaimed == {}
    finally:
        shared.close()


def test_one_poll_reads_every_watchers_queues_and_wakes_those_that_changed(
    redis_server: RedisServer, redis_client: redis.Redis[bytes]
) -> None:
    keys = KeyScheme(global_keyprefix="app:")
    shared = _broker(redis_server.url, keys)
    woken: list[str] = []
    try:
        shared.watch(("ns", "a"), ["qa", "both"], 0.2, lambda: woken.append("a"))
        shared.watch(("ns", "b"), ["qb", "both"], 0.2, lambda: woken.append("b"))
        wait_for(lambda: sorted(woken) == ["a", "b"], timeout=5, message="no first wake")
        producer = client_app(redis_server.url, {"global_keyprefix": "app:"})
        producer.send_task("celery_demo.tasks.add", args=(1, 2), queue="qb")
        producer.send_task("celery_demo.tasks.add", args=(1, 2), queue="qb", priority=9)
        wait_for(lambda: woken.count("b") == 2, timeout=5, message="b was not woken")
        reading = shared.backlog()
        assert reading is not None
        assert reading.counts == {"qa": 0, "qb": 2, "both": 0}  # every priority list counted
        time.sleep(0.6)  # three more polls with nothing new
        assert sorted(woken) == ["a", "b", "b"]  # a's queues did not change: a slept on

        redis_server.stop()
        wait_for(lambda: len(woken) == 5, timeout=10, message="an outage woke nobody")
        reading = shared.backlog()
        assert reading is not None
        assert reading.counts is None
        assert reading.error
        producer.close()
    finally:
        shared.close()


def test_a_closed_broker_leaves_no_thread_and_no_connection(
    redis_server: RedisServer, celery_worker: WorkerFactory, redis_client: redis.Redis[bytes]
) -> None:
    worker = celery_worker("-Q", "q", "-c", "1", "-E", name="w")
    before_clients = _clients(redis_server, redis_client)
    before_threads = threading.active_count()
    shared = _broker(redis_server.url)
    clusters = [("ns", f"c{i}") for i in range(20)]
    for cluster in clusters:  # twenty clusters on one broker
        shared.watch(cluster, ["q"], 0.2, lambda: None)
        shared.subscribe_events(cluster, {"q": "w"})
    shared.claim_nodes(clusters[0], [worker.node])
    wait_for(lambda: shared.events.connected, timeout=10, message="events never connected")
    for _ in clusters:  # each cluster's census and reads, one after the other
        shared.census([worker.node])
        shared.read_loads(["q"])
    held = _clients(redis_server, redis_client) - before_clients
    assert held <= 10, f"{held} connections for one broker"
    assert threading.active_count() - before_threads == shared.threads == 2
    for cluster in clusters:
        shared.release(cluster)
    shared.close()
    wait_for(
        lambda: _clients(redis_server, redis_client) == before_clients,
        timeout=10,
        message="the closed broker's connections stayed open",
    )
    assert threading.active_count() == before_threads
    assert shared.threads == 0


def test_an_unreachable_broker_raises_and_recovers(redis_server: RedisServer) -> None:
    shared = _broker(redis_server.url)
    try:
        redis_server.stop()
        with pytest.raises(WorkersUnreachable, match=r"127\.0\.0\.1"):
            shared.census(["w@integration"])
        redis_server.start()
        assert shared.census(["w@integration"]) == {}  # reconnects; nobody answers, no error
    finally:
        shared.close()
