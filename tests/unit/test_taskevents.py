"""Folding Celery events into task metrics: states, names, waits, runtimes, workers, bounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from celery_operator.taskevents import OTHER, STATES, UNKNOWN, Limits, TaskEvents


@dataclass
class Recorded:
    counts: list[tuple[str, str, str]] = field(default_factory=list)
    runtimes: list[tuple[str, str, float]] = field(default_factory=list)
    waits: list[tuple[str, str, float]] = field(default_factory=list)

    def count(self, pool: str, task: str, state: str) -> None:
        self.counts.append((pool, task, state))

    def runtime(self, pool: str, task: str, seconds: float) -> None:
        self.runtimes.append((pool, task, seconds))

    def wait(self, pool: str, task: str, seconds: float) -> None:
        self.waits.append((pool, task, seconds))


def _event(kind: str, uuid: str = "t1", **fields: Any) -> dict[str, Any]:
    return {"type": kind, "uuid": uuid, "hostname": "default@demo-worker-x", **fields}


def test_a_task_s_life_is_counted_by_pool_name_and_state_with_wait_and_runtime() -> None:
    sink = Recorded()
    events = TaskEvents(sink, pool_of_queue={"celery": "default"})
    events.feed(_event("task-sent", name="app.add", queue="celery", timestamp=100.0,
                       hostname="gen@web-1"), now=0)  # fmt: skip
    events.feed(_event("task-received", name="app.add", timestamp=101.0), now=0)
    events.feed(_event("task-started", timestamp=103.5), now=0)
    events.feed(_event("task-succeeded", runtime=0.25, timestamp=103.75), now=0)
    assert sink.counts == [
        ("default", "app.add", "sent"),
        ("default", "app.add", "received"),
        ("default", "app.add", "started"),
        ("default", "app.add", "succeeded"),
    ]
    assert sink.waits == [("default", "app.add", 3.5)]  # from sent, when there was a sent
    assert sink.runtimes == [("default", "app.add", 0.25)]
    assert events.tracked == 0  # a finished task is forgotten


def test_without_a_sent_event_the_wait_is_from_received() -> None:
    sink = Recorded()
    events = TaskEvents(sink)
    events.feed(_event("task-received", name="app.add", timestamp=10.0), now=0)
    events.feed(_event("task-started", timestamp=12.0), now=0)
    assert sink.waits == [("default", "app.add", 2.0)]


def test_every_state_of_the_event_reference_is_counted_and_others_ignored() -> None:
    sink = Recorded()
    events = TaskEvents(sink)
    for index, state in enumerate(STATES):
        events.feed(_event(f"task-{state}", uuid=f"t{index}", name="app.x"), now=0)
    events.feed(_event("task-exploded", name="app.x"), now=0)
    events.feed({"type": "something-else"}, now=0)
    assert [state for _, _, state in sink.counts] == list(STATES)


def test_events_of_a_task_never_received_count_as_unknown_then_learn_the_name() -> None:
    sink = Recorded()
    events = TaskEvents(sink)
    events.feed(_event("task-started", uuid="lost"), now=0)
    events.feed(_event("task-retried", uuid="lost", name="app.retry"), now=0)
    assert sink.counts == [("default", UNKNOWN, "started"), ("default", "app.retry", "retried")]


def test_tasks_remembered_and_names_with_series_are_bounded() -> None:
    sink = Recorded()
    events = TaskEvents(sink, limits=Limits(tasks_tracked=100, task_names=3))
    for i in range(1000):
        events.feed(_event("task-received", uuid=f"t{i}", name=f"app.task{i % 10}"), now=0)
    assert events.tracked == 100
    names = {task for _, task, _ in sink.counts}
    assert names == {"app.task0", "app.task1", "app.task2", OTHER}
    # The oldest ids were dropped: their start is counted, under no known name.
    events.feed(_event("task-started", uuid="t0", timestamp=1.0), now=0)
    events.feed(_event("task-started", uuid="t999", timestamp=1.0), now=0)
    assert sink.counts[-2:] == [("default", UNKNOWN, "started"), ("default", OTHER, "started")]


def test_workers_online_from_heartbeats_by_pool_until_silent_or_offline() -> None:
    events = TaskEvents(Recorded())
    for host in ("default@a", "default@b", "reports@c"):
        events.feed({"type": "worker-heartbeat", "hostname": host, "freq": 2.0}, now=100.0)
    assert events.online(now=101.0) == {"default": 2, "reports": 1}
    events.feed({"type": "worker-offline", "hostname": "default@b"}, now=102.0)
    events.feed({"type": "worker-heartbeat", "hostname": "default@a", "freq": 2.0}, now=104.0)
    assert events.online(now=106.5) == {"default": 1}  # reports@c: silent since 100 (> 6 s)
    assert events.online(now=200.0) == {}
