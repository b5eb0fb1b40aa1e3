"""Task metrics from real workers' events, received as the operator receives them: one receiver
per broker, each event counted for the cluster whose worker sent it."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from celery_operator.eventstream import BrokerEvents
from celery_operator.queues import KeyScheme
from celery_operator.remote import control_app
from tests.integration.procs import RedisServer, WorkerFactory, client_app, wait_for

QUEUE = "q"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_task_events_become_counts_histograms_and_workers_online(
    redis_server: RedisServer, celery_worker: WorkerFactory
) -> None:
    worker = celery_worker("-Q", QUEUE, "-c", "2", "-E", name="default")
    key = ("events", f"c-{uuid.uuid4().hex[:6]}")
    app = control_app(redis_server.url, KeyScheme(), timeout=2.0)
    stream = BrokerEvents(app, "test")
    stream.claim(key, [worker.node])
    stream.subscribe(key, {QUEUE: "default"})
    try:
        wait_for(lambda: stream.connected, timeout=10, message="the receiver never connected")
        wait_for(
            lambda: stream.online(key).get("default") == 1,
            timeout=15,
            message="no heartbeat from the worker",
        )
        producer = client_app(redis_server.url)
        results = [
            producer.send_task("celery_demo.tasks.add", args=(i, i), queue=QUEUE) for i in range(5)
        ]
        failures = [
            producer.send_task("celery_demo.tasks.fail", args=("on purpose",), queue=QUEUE)
            for _ in range(2)
        ]
        for result in results:
            assert result.get(timeout=30) in range(0, 10, 2)
        for failure in failures:
            failure.get(timeout=30, propagate=False)
        labels = {"namespace": key[0], "cluster": key[1], "pool": "default"}
        add = {**labels, "task": "celery_demo.tasks.add"}
        fail = {**labels, "task": "celery_demo.tasks.fail"}

        def counted() -> bool:
            return (
                _value("celery_operator_tasks_total", **add, state="succeeded") == 5
                and _value("celery_operator_tasks_total", **fail, state="failed") == 2
            )

        wait_for(counted, timeout=15, message="the task events were not all counted")
        for task, done in ((add, 5), (fail, 2)):
            assert _value("celery_operator_tasks_total", **task, state="received") == done
            assert _value("celery_operator_tasks_total", **task, state="started") == done
            assert _value("celery_operator_task_queue_wait_seconds_count", **task) == done
        assert _value("celery_operator_task_runtime_seconds_count", **add) == 5
        assert _value("celery_operator_task_runtime_seconds_count", **fail) == 0
        assert stream.tracked(key) == 0  # every task finished: nothing remembered
        producer.close()
    finally:
        stream.stop()
    assert not stream.running


def test_one_receiver_counts_each_event_for_its_own_cluster_only(
    redis_server: RedisServer, celery_worker: WorkerFactory
) -> None:
    """Two clusters and a worker outside Kubernetes on one broker: each cluster counts its own
    worker's tasks, nobody counts the outsider's, and an unsubscribed cluster counts nothing."""
    mine = celery_worker("-Q", "qa", "-c", "1", "-E", name="a")
    theirs = celery_worker("-Q", "qb", "-c", "1", "-E", name="b")
    celery_worker("-Q", "qc", "-c", "1", "-E", name="outside")
    a, b = ("events", f"a-{uuid.uuid4().hex[:6]}"), ("events", f"b-{uuid.uuid4().hex[:6]}")
    app = control_app(redis_server.url, KeyScheme(), timeout=2.0)
    stream = BrokerEvents(app, "test")
    stream.claim(a, [mine.node])
    stream.claim(b, [theirs.node])
    stream.subscribe(a, {"qa": "a"})
    stream.subscribe(b, {"qb": "b"})
    try:
        wait_for(lambda: stream.connected, timeout=10, message="the receiver never connected")
        # "connected" comes before the receiver has subscribed: events sent before that are
        # lost to it. A heartbeat from each worker proves the subscription is live.
        wait_for(
            lambda: stream.online(a).get("a") == 1 and stream.online(b).get("b") == 1,
            timeout=15,
            message="no heartbeat from the clusters' workers",
        )
        producer = client_app(redis_server.url)
        sent = {
            queue: [
                producer.send_task("celery_demo.tasks.add", args=(1, 1), queue=queue)
                for _ in range(count)
            ]
            for queue, count in (("qa", 3), ("qb", 2), ("qc", 4))
        }
        for results in sent.values():
            for result in results:
                assert result.get(timeout=30) == 2

        def succeeded(key: tuple[str, str], pool: str) -> float:
            return _value(
                "celery_operator_tasks_total",
                namespace=key[0],
                cluster=key[1],
                pool=pool,
                task="celery_demo.tasks.add",
                state="succeeded",
            )

        wait_for(
            lambda: (succeeded(a, "a"), succeeded(b, "b")) == (3, 2),
            timeout=15,
            message="each cluster did not count its own worker's tasks",
        )
        wait_for(
            lambda: stream.dropped >= 4 * 3,  # the outsider's received, started, succeeded
            timeout=15,
            message="the outside worker's task events were not left uncounted",
        )
        assert succeeded(a, "outside") == succeeded(b, "outside") == 0
        stream.unsubscribe(b)
        producer.send_task("celery_demo.tasks.add", args=(1, 1), queue="qb").get(timeout=30)
        producer.send_task("celery_demo.tasks.add", args=(1, 1), queue="qa").get(timeout=30)
        wait_for(lambda: succeeded(a, "a") == 4, timeout=15, message="a stopped counting")
        assert succeeded(b, "b") == 2  # b is gone: its worker's events count for nobody
        assert stream.subscribers == 1
        producer.close()
    finally:
        stream.stop()
    assert not stream.running
