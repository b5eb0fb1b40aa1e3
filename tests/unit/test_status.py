from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celery_operator import health, scaling, status
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
        "WorkersHealthy": ("Unknown", Reason.NOT_CHECKED),
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


def _report(**kw: Any) -> health.HealthReport:
    base: dict[str, Any] = {
        "at": T0,
        "pools": (health.PoolHealth("default", checked=2, answering=2),),
    }
    base.update(kw)
    return health.HealthReport(**base)


STUCK = health.Verdict("demo-worker-default-a", health.Kind.STUCK, "all 2 slot(s) ...")


def test_health_answering_counts_and_condition() -> None:
    update = compute(_healthy(health=_report()), {}, T0)
    [pool] = update.status["pools"]
    assert (pool["workersAnswering"], pool["workersChecked"]) == (2, 2)
    assert "restarts" not in pool
    assert _conditions(update)["WorkersHealthy"] == ("True", Reason.ALL_ANSWERING)


def test_restarts_are_listed_newest_first_and_read_back_for_the_budget() -> None:
    restart = health.Restart("default", STUCK.pod, "uid-1", STUCK)
    report = _report(
        pools=(health.PoolHealth("default", 2, 2, hung=(STUCK,)),), restarts=(restart,)
    )
    calm = compute(_healthy(health=_report()), {}, T0)
    first = compute(_healthy(health=report), calm.status, T0)
    [pool] = first.status["pools"]
    assert pool["restarts"] == [
        {
            "pod": STUCK.pod,
            "verdict": "Stuck",
            "evidence": STUCK.evidence,
            "time": "2026-01-01T00:00:00Z",
        }
    ]
    condition = _conditions(first)["WorkersHealthy"]
    assert condition == ("False", Reason.HUNG_WORKERS)
    [change] = [t for t in first.transitions if t.type == "WorkersHealthy"]
    assert change.warning
    assert "restarted" in change.message
    # The next cycle finds everyone healthy: the restart stays listed, the condition recovers.
    later = T0 + timedelta(minutes=1)
    second = compute(_healthy(health=_report(at=later)), first.status, later)
    assert second.status["pools"][0]["restarts"] == pool["restarts"]
    assert _conditions(second)["WorkersHealthy"] == ("True", Reason.ALL_ANSWERING)
    assert status.restart_times(second.status) == {"default": [(STUCK.pod, T0)]}


def test_guards_say_why_nobody_was_judged() -> None:
    unreachable = _report(guard=health.BROKER_UNREACHABLE, message="cannot ask the workers")
    mass = _report(guard=health.MASS_UNRESPONSIVE, message="4 of 5 workers stopped answering")
    assert _conditions(compute(_healthy(health=unreachable), {}, T0))["WorkersHealthy"] == (
        "Unknown",
        "BrokerUnreachable",
    )
    assert _conditions(compute(_healthy(health=mass), {}, T0))["WorkersHealthy"] == (
        "False",
        "MassUnresponsive",
    )


def test_a_reconcile_without_a_health_cycle_keeps_the_last_findings() -> None:
    checked = compute(_healthy(health=_report()), {}, T0)
    again = compute(_healthy(), checked.status, T0 + timedelta(seconds=5))
    assert again.status == checked.status
    assert again.transitions == []


# --- autoscaling --------------------------------------------------------------------------------


def _decision(
    reason: str = scaling.Reason.LOAD,
    replicas: int = 4,
    current: int = 1,
    limited: str | None = None,
    recommended: int | None = None,
) -> scaling.Decision:
    return scaling.Decision(
        replicas=replicas,
        current=current,
        reason=reason,
        message=f"{current} → {replicas}: 7 waiting + 2 running over 2 per replica",
        history=scaling.History(),
        recommended=replicas if recommended is None else recommended,
        limited=limited,
    )


def _scaled(
    name: str = "default",
    decision: scaling.Decision | None = None,
    load: scaling.Load | None = None,
    last_scale: scaling.LastScale | None = None,
    replicas: int = 4,
) -> scaling.PoolReport:
    return scaling.PoolReport(
        name,
        scaling.Load(backlog=7, running=2, held=1, busy_workers=2) if load is None else load,
        replicas,
        _decision() if decision is None else decision,
        last_scale,
    )


SCALED_UP = scaling.LastScale(
    at=T0, before=1, after=4, reason=scaling.Reason.LOAD, message="1 → 4: 7 waiting + 2 running"
)


def test_an_autoscaled_pool_shows_its_reading_decision_and_last_scale() -> None:
    update = compute(_healthy(scaling=(_scaled(last_scale=SCALED_UP),)), {}, T0)
    [pool] = update.status["pools"]
    assert pool["autoscaling"] == {
        "desiredReplicas": 4,
        "running": 2,
        "prefetched": 1,
        "busyWorkers": 2,
        "reason": "Load",
        "message": "1 → 4: 7 waiting + 2 running over 2 per replica",
        "lastScale": {
            "time": "2026-01-01T00:00:00Z",
            "from": 1,
            "to": 4,
            "reason": "Load",
            "message": "1 → 4: 7 waiting + 2 running",
        },
    }
    assert pool["inFlight"] == 3  # running + prefetched
    assert update.status["inFlight"] == 3
    assert update.status["lastScale"] == "default 1→4 (Load)"
    assert update.status["scaling"] == "default 2/4, 7 waiting, 3 held"  # the -o wide column


def test_cluster_in_flight_sums_the_pools_whose_tasks_are_known() -> None:
    pools = (_pool("default"), _pool("reports"), _pool("plain"))
    reports = (
        _scaled("default"),
        _scaled("reports", load=scaling.Load(backlog=0, running=None)),
    )
    update = compute(_healthy(pools=pools, scaling=reports), {}, T0)
    default, unknown, plain = update.status["pools"]
    assert default["inFlight"] == 3
    assert "inFlight" not in unknown
    assert "running" not in unknown["autoscaling"]
    assert "autoscaling" not in plain
    assert "inFlight" not in plain
    assert update.status["inFlight"] == 3
    assert update.status["scaling"] == "default 2/4, 7 waiting, 3 held; reports 2/4, 0 waiting"


def test_no_in_flight_while_no_pool_s_tasks_are_known() -> None:
    unknown = _scaled(load=scaling.Load(backlog=3, running=None))
    update = compute(_healthy(scaling=(unknown,)), {}, T0)
    assert "inFlight" not in update.status
    assert "inFlight" not in update.status["pools"][0]


def test_last_scale_is_the_latest_of_every_pool() -> None:
    later = scaling.LastScale(T0 + timedelta(seconds=5), 6, 3, scaling.Reason.IDLE, "6 → 3")
    reports = (_scaled("default", last_scale=SCALED_UP), _scaled("reports", last_scale=later))
    pools = (_pool("default"), _pool("reports"))
    update = compute(_healthy(pools=pools, scaling=reports), {}, T0)
    assert update.status["lastScale"] == "reports 6→3 (Idle)"


def test_autoscaling_with_valid_metrics_is_active_and_within_range() -> None:
    update = compute(_healthy(scaling=(_scaled(),)), {}, T0)
    conditions = _conditions(update)
    assert conditions["ScalingActive"] == ("True", Reason.VALID_METRICS)
    assert conditions["ScalingLimited"] == ("False", Reason.WITHIN_RANGE)
    assert [c["type"] for c in update.status["conditions"]] == list(status.CONDITION_TYPES)


def test_a_pool_not_polled_yet_leaves_scaling_active_unknown() -> None:
    waiting = scaling.PoolReport("default", None, 2, None)
    update = compute(_healthy(scaling=(waiting,)), {}, T0)
    assert _conditions(update)["ScalingActive"] == ("Unknown", Reason.NOT_POLLED)
    assert update.status["pools"][0]["autoscaling"] == {"desiredReplicas": 2}
    assert "lastScale" not in update.status


@pytest.mark.parametrize(
    "reason", [scaling.Reason.BROKER_UNREADABLE, scaling.Reason.FALLBACK], ids=["hold", "fallback"]
)
def test_broker_unreadable_makes_scaling_inactive_with_a_warning(reason: str) -> None:
    active = compute(_healthy(scaling=(_scaled(),)), {}, T0)
    blind = _scaled(decision=_decision(reason, replicas=4, current=4))
    later = T0 + timedelta(seconds=30)
    update = compute(_healthy(scaling=(blind,)), active.status, later)
    assert _conditions(update)["ScalingActive"] == ("False", Reason.SCALING_BROKER_UNREADABLE)
    [event] = [t for t in update.transitions if t.type == "ScalingActive"]
    assert event.warning
    assert event.reason == "BrokerUnreadable"
    assert "default" in event.message
    condition = next(c for c in update.status["conditions"] if c["type"] == "ScalingActive")
    assert condition["lastTransitionTime"] == "2026-01-01T00:00:30Z"


def test_a_pool_held_at_max_replicas_is_limited_without_a_warning() -> None:
    within = compute(_healthy(scaling=(_scaled(),)), {}, T0)
    capped = _scaled(
        decision=_decision(
            scaling.Reason.MAX_REPLICAS,
            replicas=5,
            current=5,
            limited=scaling.Reason.MAX_REPLICAS,
            recommended=50,
        ),
        replicas=5,
    )
    update = compute(_healthy(scaling=(capped,)), within.status, T0)
    assert _conditions(update)["ScalingLimited"] == ("True", Reason.AT_MAX)
    assert _conditions(update)["ScalingActive"] == ("True", Reason.VALID_METRICS)
    limited = next(c for c in update.status["conditions"] if c["type"] == "ScalingLimited")
    assert limited["message"] == "pool default wants 50, held at 5 by MaxReplicas"
    assert update.status["pools"][0]["autoscaling"]["limitedBy"] == "MaxReplicas"
    [event] = [t for t in update.transitions if t.type == "ScalingLimited"]
    assert not event.warning


def test_min_replicas_limit_reason() -> None:
    floor = _decision(scaling.Reason.MIN_REPLICAS, replicas=1, limited=scaling.Reason.MIN_REPLICAS)
    update = compute(_healthy(scaling=(_scaled(decision=floor, replicas=1),)), {}, T0)
    assert _conditions(update)["ScalingLimited"] == ("True", Reason.AT_MIN)


def test_no_scaling_conditions_or_fields_without_autoscaled_pools() -> None:
    scaled = compute(_healthy(scaling=(_scaled(last_scale=SCALED_UP),)), {}, T0)
    assert {"ScalingActive", "ScalingLimited"} <= set(_conditions(scaled))
    update = compute(_healthy(), scaled.status, T0)  # the pool stopped autoscaling
    assert update.transitions == []
    assert not {"ScalingActive", "ScalingLimited"} & set(_conditions(update))
    assert not {"inFlight", "lastScale"} & set(update.status)
    assert "autoscaling" not in update.status["pools"][0]
    assert "inFlight" not in update.status["pools"][0]


def test_an_autoscaled_pool_scaling_up_stays_available_while_its_minimum_is() -> None:
    """Scaling 1 → 4 is not an outage: an autoscaled pool needs its minReplicas available."""
    scaling_up = _pool(desired=4, ready=1, rolled_out=False, required=1)
    assert _conditions(compute(_healthy(pools=(scaling_up,)), {}, T0))["Available"] == (
        "True",
        Reason.ALL_READY,
    )
    below_minimum = _pool(desired=4, ready=1, rolled_out=False, required=2)
    fixed_size = _pool(desired=4, ready=1, rolled_out=False)
    for pool in (below_minimum, fixed_size):
        assert _conditions(compute(_healthy(pools=(pool,)), {}, T0))["Available"] == (
            "False",
            Reason.WORKERS_UNAVAILABLE,
        )


@pytest.mark.parametrize(
    ("condition", "failure"),
    [
        pytest.param(
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "m"},
            status.CreateFailure("FailedCreate", "m"),
            id="replica-failure",
        ),
        pytest.param(
            {"type": "ReplicaFailure", "status": "False", "reason": "FailedCreate"},
            None,
            id="cleared",
        ),
        pytest.param({"type": "Available", "status": "False"}, None, id="other-condition"),
    ],
)
def test_a_deployment_s_replica_failure_is_read(
    condition: dict[str, str], failure: status.CreateFailure | None
) -> None:
    live = {"metadata": {"generation": 1}, "status": {"conditions": [condition]}}
    assert status.observe_pool("default", ["celery"], 1, live, None).create_failure == failure


def test_a_spec_problem_comes_before_pods_that_cannot_be_created() -> None:
    failing = _pool(ready=0, create_failure=status.CreateFailure("FailedCreate", "quota"))
    update = compute(
        _healthy(pools=(failing,), problems=(Problem(Reason.INVALID_SPEC, "bad"),)), {}, T0
    )
    assert _conditions(update)["Degraded"] == ("True", Reason.INVALID_SPEC)
    update = compute(_healthy(pools=(failing,)), {}, T0)
    assert _conditions(update)["Degraded"] == ("True", Reason.FAILED_CREATE)
    assert update.status["pools"][0]["replicaFailure"] == {
        "reason": "FailedCreate",
        "message": "quota",
    }


def test_only_a_recent_failed_create_event_explains_beat_s_missing_pod() -> None:
    def event(at: datetime, message: str) -> dict[str, str]:
        return {
            "reason": "FailedCreate",
            "message": message,
            "lastTimestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    fresh = status.FAILED_CREATE_FRESH_SECONDS
    stale = event(T0 - timedelta(seconds=fresh + 1), "quota, since raised")
    recent = event(T0 - timedelta(seconds=fresh - 1), "quota")
    unrelated = {**recent, "reason": "SuccessfulCreate", "lastTimestamp": T0.isoformat()}
    assert status.beat_create_failure([stale, unrelated], T0) is None
    assert status.beat_create_failure([stale, recent], T0) == status.CreateFailure(
        "FailedCreate", "quota"
    )
