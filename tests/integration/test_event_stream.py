"""Task metrics from a real worker's events, received as the operator receives them."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from celery_operator.eventstream import EventStream
from celery_operator.queues import KeyScheme
from celery_operator.remote import control_app
from tests.integration.procs import RedisServer, WorkerFactory, client_app, wait_for

QUEUE = "q"


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_task_events_become_counts_histograms_and_workers_online(
    redis_server: RedisServer, celery_worker: WorkerFactory
) -> None:
    celery_worker("-Q", QUEUE, "-c", "2", "-E", name="default")
    key = ("events", f"c-{uuid.uuid4().hex[:6]}")
    app = control_app(redis_server.url, KeyScheme(), timeout=2.0)
    stream = EventStream(key, app, {QUEUE: "default"})
    stream.start()
    try:
        wait_for(lambda: stream.connected, timeout=10, message="the receiver never connected")
        wait_for(
            lambda: stream.online().get("default") == 1,
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
        assert stream.events.tracked == 0  # every task finished: nothing remembered
        producer.close()
    finally:
        stream.stop()
    assert not stream.running
