"""What workers hold, as the autoscaler asks it (``remote.tasks_in_hand``), against real workers.

A fleet whose queue is empty can still be full of work: tasks running, and tasks prefetched into
a worker and waiting there (gone from the broker's lists, so invisible to a queue-length
trigger). The autoscaler must see both, per worker, to keep busy workers and remove idle ones.
"""

from __future__ import annotations

import pytest

from celery_operator.queues import KeyScheme
from celery_operator.remote import WorkersUnreachable, control_app, tasks_in_hand
from tests.integration.procs import RedisServer, WorkerFactory, client_app, wait_for

QUEUE = "q"
LONG = 10.0


def test_running_and_prefetched_tasks_are_counted_per_worker(
    redis_server: RedisServer, celery_worker: WorkerFactory
) -> None:
    # Concurrency 2 with prefetch 2: the worker holds up to 4 tasks, runs 2 of them.
    busy = celery_worker(
        "-Q", QUEUE, "-c", "2", "--prefetch-multiplier", "2", "-P", "threads", name="busy"
    )
    idle = celery_worker("-Q", "other", "-c", "2", "-P", "threads", name="idle")
    producer = client_app(redis_server.url)
    for _ in range(6):
        producer.send_task("celery_demo.tasks.sleep", args=[LONG], queue=QUEUE)
    app = control_app(redis_server.url, KeyScheme(), timeout=1.0)
    nodes = [busy.node, idle.node, "ghost@integration"]

    def settled() -> dict[str, tuple[int, int]] | None:
        held = tasks_in_hand(app, nodes, timeout=1.0)
        return held if held.get(busy.node) == (2, 2) else None

    held = wait_for(settled, timeout=30, message="the busy worker never held 2 + 2 tasks")
    assert held == {busy.node: (2, 2), idle.node: (0, 0)}  # the ghost did not answer
    producer.close()
    app.close()


def test_no_broker_raises_workers_unreachable(redis_server: RedisServer) -> None:
    app = control_app("redis://127.0.0.1:1/0", KeyScheme(), timeout=0.5)
    with pytest.raises(WorkersUnreachable):
        tasks_in_hand(app, ["w@integration"], timeout=0.5)
    assert tasks_in_hand(app, [], timeout=0.5) == {}  # nobody to ask: no broker needed
