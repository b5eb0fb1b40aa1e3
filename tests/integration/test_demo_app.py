"""The demo app behaves as the operator's tests and demo assume, with a real worker and beat."""

from __future__ import annotations

import uuid

import pytest
import redis
from celery import Celery

from tests.integration.procs import BeatFactory, WorkerFactory, wait_for

TASKS = "celery_demo.tasks"
RESULT_TIMEOUT = 30.0


def test_add_round_trips_through_a_real_worker(
    celery_worker: WorkerFactory, celery_client: Celery
) -> None:
    celery_worker()
    result = celery_client.send_task(f"{TASKS}.add", args=(20, 22))
    assert result.get(timeout=RESULT_TIMEOUT) == 42
    assert result.state == "SUCCESS"


def test_a_failing_task_surfaces_as_failure_with_its_exception(
    celery_worker: WorkerFactory, celery_client: Celery
) -> None:
    celery_worker()
    result = celery_client.send_task(f"{TASKS}.fail", args=("boom 17",))
    with pytest.raises(Exception, match="boom 17") as raised:
        result.get(timeout=RESULT_TIMEOUT)
    # The client cannot import the app's exception class; Celery rebuilds one with its name.
    assert type(raised.value).__name__ == "DemoTaskError"
    assert result.state == "FAILURE"
    assert "DemoTaskError" in (result.traceback or "")


def test_a_worker_given_two_queues_consumes_both(
    celery_worker: WorkerFactory, celery_client: Celery, redis_client: redis.Redis[bytes]
) -> None:
    worker = celery_worker("-Q", "alpha,beta", name="multi")

    replies = celery_client.control.inspect(
        destination=[worker.node], timeout=5.0, limit=1
    ).active_queues()
    assert replies is not None, "active_queues got no reply"
    assert {q["name"] for q in replies[worker.node]} == {"alpha", "beta"}

    results = {
        queue: celery_client.send_task(f"{TASKS}.record", args=("queues", queue), queue=queue)
        for queue in ("alpha", "beta")
    }
    for result in results.values():
        result.get(timeout=RESULT_TIMEOUT)
    assert redis_client.smembers("queues:tokens") == {b"alpha", b"beta"}
    assert redis_client.get("queues:runs") == b"2"


def test_every_recorded_task_runs_exactly_once(
    celery_worker: WorkerFactory, celery_client: Celery, redis_client: redis.Redis[bytes]
) -> None:
    celery_worker("-c", "2")
    tokens = [uuid.uuid4().hex for _ in range(20)]
    results = [celery_client.send_task(f"{TASKS}.record", args=("once", t)) for t in tokens]
    for result in results:
        result.get(timeout=RESULT_TIMEOUT)
    assert redis_client.smembers("once:tokens") == {t.encode() for t in tokens}
    assert redis_client.get("once:runs") == b"20"


def test_beat_schedules_beat_tick_and_a_worker_runs_it(
    celery_worker: WorkerFactory, celery_beat: BeatFactory, redis_client: redis.Redis[bytes]
) -> None:
    every_second = {"CELERY_DEMO_BEAT_INTERVAL": "1"}
    celery_worker(env=every_second)
    beat = celery_beat(env=every_second)

    wait_for(
        lambda: int(redis_client.get("celery_demo:beat_ticks") or 0) >= 2,
        timeout=30,
        message=f"beat_tick did not run twice:\n{beat.log_tail()}",
    )
    assert "Scheduler: Sending due task beat-tick (celery_demo.tasks.beat_tick)" in beat.log_tail(
        200
    )


def test_demo_keys_carry_the_global_keyprefix(
    celery_worker: WorkerFactory, celery_beat: BeatFactory, redis_client: redis.Redis[bytes]
) -> None:
    env = {
        "CELERY_DEMO_BEAT_INTERVAL": "1",
        "CELERY_BROKER_TRANSPORT_OPTIONS": '{"global_keyprefix": "demo1:"}',
    }
    celery_worker(env=env)  # its ping already needed the prefixed pidbox channel
    celery_beat(env=env)

    wait_for(
        lambda: int(redis_client.get("demo1:celery_demo:beat_ticks") or 0) >= 1,
        timeout=30,
        message="beat_tick never counted under the prefix",
    )
    assert redis_client.get("celery_demo:beat_ticks") is None
