"""The load the autoscaler hands to the policy, from a backlog read and the workers' answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery_operator.autoscaler import TASKS_FRESH, PodTasks, TaskReading, pool_load
from celery_operator.scaling import Load
from celery_operator.spec import WorkerPool

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POOL = WorkerPool(name="default", queues=("a", "b"))


def _reading(age: timedelta = timedelta(seconds=1), error: str | None = None) -> TaskReading:
    return TaskReading(
        at=NOW - age,
        pods={
            "idle": PodTasks("default", ready=True, cost=None, tasks=(0, 0)),
            "busy": PodTasks("default", ready=True, cost="0", tasks=(2, 3)),
            "prefetching": PodTasks("default", ready=True, cost=None, tasks=(0, 1)),
            "silent": PodTasks("default", ready=True, cost=None, tasks=None),
            "starting": PodTasks("default", ready=False, cost=None, tasks=None),
            "other-pool": PodTasks("reports", ready=True, cost=None, tasks=(5, 5)),
        },
        error=error,
    )


def test_every_queue_of_the_pool_and_every_worker_that_holds_a_task_count() -> None:
    load = pool_load(POOL, 5, {"a": 7, "b": 3, "c": 100}, _reading(), NOW)
    # busy, prefetching and the silent ready worker hold tasks; idle and starting do not.
    assert load == Load(backlog=10, running=2, held=4, busy_workers=3)


def test_an_old_or_failed_answer_leaves_the_running_tasks_unknown() -> None:
    stale = pool_load(POOL, 5, {"a": 1}, _reading(age=TASKS_FRESH + timedelta(seconds=1)), NOW)
    failed = pool_load(POOL, 5, {"a": 1}, _reading(error="broker down"), NOW)
    never = pool_load(POOL, 5, {"a": 1}, None, NOW)
    assert stale == failed == never == Load(backlog=1, running=None)


def test_a_pool_at_zero_holds_nothing_even_unasked() -> None:
    assert pool_load(POOL, 0, {"a": 4}, None, NOW) == Load(backlog=4, running=0)


def test_an_unreadable_broker_leaves_the_backlog_unknown() -> None:
    assert pool_load(POOL, 5, None, _reading(), NOW).backlog is None


def test_rabbitmqs_unacked_counts_of_the_pools_queues_are_summed_asked_or_not() -> None:
    unacked = {"a": 2, "b": 1, "c": 50}
    asked = pool_load(POOL, 5, {"a": 7}, _reading(), NOW, unacked=unacked)
    assert asked == Load(backlog=7, running=2, held=4, busy_workers=3, unacked=3)
    unasked = pool_load(POOL, 5, {"a": 7}, None, NOW, unacked=unacked)
    assert unasked == Load(backlog=7, running=None, unacked=3)
    assert pool_load(POOL, 5, {"a": 7}, None, NOW).unacked is None  # Redis: not told
