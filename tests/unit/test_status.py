from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery_operator import status
from celery_operator.status import Observation, PoolObservation, Problem, Reason, compute

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _pool(
    name: str = "default", desired: int = 2, ready: int = 2, rolled_out: bool = True, **kw: Any
) -> PoolObservation:
    return PoolObservation(
        name,
        ("celery",),
        desired,
        replicas=ready,
        ready=ready,
        available=ready,
        updated=ready,
        rolled_out=rolled_out,
        **kw,
    )


def _healthy(**kw: Any) -> Observation:
    base: dict[str, Any] = {
        "generation": 3,
        "pools": (_pool(),),
        "beat_enabled": True,
        "beat_ready": True,
        "beat_rolled_out": True,
        "queue_backlog": {"celery": 7},
    }
    base.update(kw)
    return Observation(**base)


def _conditions(update: status.StatusUpdate) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in update.status["conditions"]}


def test_healthy_cluster_is_available_with_printer_column_values() -> None:
    update = compute(_healthy(), {}, T0)
    s = update.status
    assert (s["phase"], s["workers"], s["beat"], s["backlog"]) == ("Available", "2/2", "Ready", 7)
    assert s["observedGeneration"] == 3
    assert _conditions(update) == {
        "Available": ("True", Reason.ALL_READY),
        "Progressing": ("False", Reason.RECONCILED),
        "Degraded": ("False", Reason.AS_EXPECTED),
        "BrokerReachable": ("True", Reason.BROKER_OK),
    }


def test_same_observation_twice_gives_identical_status_and_no_transitions() -> None:
    first = compute(_healthy(), {}, T0)
    second = compute(_healthy(), first.status, T0 + timedelta(minutes=5))
    assert second.status == first.status  # lastTransitionTime kept: nothing to write
    assert second.transitions == []


def test_new_cluster_reports_only_meaningful_transitions() -> None:
    update = compute(_healthy(), {}, T0)
    assert {(t.type, t.status) for t in update.transitions} == {
        ("Available", "True"),
        ("BrokerReachable", "True"),
    }


def test_rollout_in_progress() -> None:
    update = compute(_healthy(pools=(_pool(ready=1, rolled_out=False),)), {}, T0)
    assert update.status["phase"] == "Progressing"
    assert _conditions(update)["Available"] == ("False", Reason.WORKERS_UNAVAILABLE)
    assert _conditions(update)["Progressing"] == ("True", Reason.ROLLING_OUT)


def test_invalid_spec_is_degraded_with_the_message_and_a_warning_event() -> None:
    previous = compute(_healthy(), {}, T0).status
    problem = Problem(Reason.INVALID_SPEC, "spec.workers[0].concurrency: must be ≥ 1 (got 0)")
    update = compute(_healthy(problems=(problem,)), previous, T0 + timedelta(seconds=1))
    assert update.status["phase"] == "Degraded"
    degraded = next(c for c in update.status["conditions"] if c["type"] == "Degraded")
    assert degraded["message"] == problem.message
    assert degraded["lastTransitionTime"] == "2026-01-01T00:00:01Z"
    [event] = [t for t in update.transitions if t.type == "Degraded"]
    assert event.warning
    assert event.reason == Reason.INVALID_SPEC


def test_broker_unreachable_keeps_last_backlog_and_warns() -> None:
    previous = compute(_healthy(), {}, T0).status
    update = compute(
        _healthy(queue_backlog=None, broker_error="ConnectionError: refused"), previous, T0
    )
    assert update.status["backlog"] == 7
    assert _conditions(update)["BrokerReachable"] == ("False", Reason.BROKER_UNREACHABLE)
    assert [t.type for t in update.transitions] == ["BrokerReachable"]


def test_beat_disabled_and_scaled_to_zero_pool_is_available() -> None:
    update = compute(
        _healthy(
            pools=(_pool(desired=0, ready=0),),
            beat_enabled=False,
            beat_ready=False,
            beat_rolled_out=False,
        ),
        {},
        T0,
    )
    assert update.status["beat"] == "Disabled"
    assert update.status["phase"] == "Available"


def test_stalled_rollout_is_degraded() -> None:
    update = compute(_healthy(pools=(_pool(ready=1, rolled_out=False, stalled=True),)), {}, T0)
    assert _conditions(update)["Degraded"] == ("True", Reason.ROLLOUT_STALLED)


def test_observe_pool_from_a_live_deployment() -> None:
    live = {
        "metadata": {"generation": 4},
        "spec": {"replicas": 3},
        "status": {
            "observedGeneration": 4,
            "replicas": 3,
            "updatedReplicas": 3,
            "readyReplicas": 2,
            "availableReplicas": 2,
        },
    }
    seen = status.observe_pool("default", ["a", "b"], 3, live, {"a": 4, "b": 1, "c": 100})
    assert (seen.ready, seen.available, seen.rolled_out, seen.backlog) == (2, 2, True, 5)
    stale = status.observe_pool("default", ["a"], 3, {**live, "metadata": {"generation": 5}}, None)
    assert not stale.rolled_out
    assert stale.backlog is None
