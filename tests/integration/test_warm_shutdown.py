"""Celery's warm shutdown, which the operator relies on when Kubernetes deletes a worker pod.

The kubelet sends SIGTERM to the container's main process and kills it after
``terminationGracePeriodSeconds``: a worker must finish what it is running within that time, exit
0, and leave the tasks it had not started in the queue for the other workers.
"""

from __future__ import annotations

import time
import uuid

import redis
from celery import Celery

from tests.integration.procs import WorkerFactory, wait_for

TASK_SECONDS = 5.0
EXIT_BOUND = TASK_SECONDS + 15.0
"""How long after SIGTERM the worker may take: the task's remainder plus shutdown overhead."""


def test_sigterm_lets_the_running_task_finish_then_exits_zero(
    celery_worker: WorkerFactory, celery_client: Celery, redis_client: redis.Redis[bytes]
) -> None:
    worker = celery_worker("-c", "1", name="draining")
    sent_at = time.monotonic()
    running = celery_client.send_task("celery_demo.tasks.sleep", args=(TASK_SECONDS,))
    wait_for(
        lambda: running.state == "STARTED",
        timeout=20,
        message=f"sleep never started:\n{worker.log_tail()}",
    )
    # Queued behind it: with one slot and prefetch 1 the worker has not reserved these yet.
    tokens = [uuid.uuid4().hex for _ in range(3)]
    waiting = [celery_client.send_task("celery_demo.tasks.record", args=("w", t)) for t in tokens]

    worker.proc.terminate()
    signalled_at = time.monotonic()
    assert signalled_at - sent_at < TASK_SECONDS - 1, "too slow to signal while the task ran"
    exit_code = worker.proc.wait(timeout=EXIT_BOUND)
    exited_at = time.monotonic()

    assert exit_code == 0, worker.log_tail()
    # It waited for the task (which cannot have ended before sent_at + TASK_SECONDS) ...
    assert exited_at - sent_at >= TASK_SECONDS
    # ... and the result was stored before the process was gone.
    assert running.state == "SUCCESS"
    assert running.result == TASK_SECONDS
    assert "worker: Warm shutdown (MainProcess)" in worker.log_tail(200)

    # Nothing else ran, and nothing was lost: the others are still queued, none left unacked.
    assert redis_client.get("w:runs") is None
    assert redis_client.llen("celery") == len(tokens)
    assert redis_client.hlen("unacked") == 0

    celery_worker("-c", "2", name="successor")
    for result in waiting:
        result.get(timeout=30)
    assert redis_client.smembers("w:tokens") == {t.encode() for t in tokens}
    assert redis_client.get("w:runs") == str(len(tokens)).encode()
