from __future__ import annotations

from typing import Any

import pytest

from celery_operator.queues import KeyScheme
from celery_operator.spec import (
    DEFAULT_SCALE_UP,
    MAX_REPLICAS,
    Autoscaling,
    ScalingRules,
    SpecError,
    parse_cluster,
)
from tests.unit.samples import full_spec, minimal_spec, with_changes


def test_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse_cluster("demo", minimal_spec())
    pool = spec.workers[0]
    assert (pool.queues, pool.replicas, pool.concurrency, pool.pool) == (
        ("celery",),
        1,
        2,
        "prefork",
    )
    assert pool.termination_grace_period_seconds == 60
    assert spec.image_pull_policy == "IfNotPresent"
    assert spec.broker.secret_key == "url"
    assert spec.broker.keys == KeyScheme()
    assert spec.beat.enabled
    assert spec.beat.persistence == "emptyDir"
    assert spec.probes.enabled
    assert (spec.probes.startup_timeout_seconds, spec.probes.broker_grace_seconds) == (120, 30)
    live = spec.probes.worker_liveness
    assert (live.period_seconds, live.timeout_seconds, live.failure_threshold) == (10, 5, 3)


def test_full_spec_keeps_every_field() -> None:
    spec = parse_cluster("demo", full_spec())
    default, reports = spec.workers
    assert default.queues == ("celery", "emails")
    assert (default.soft_time_limit_seconds, default.time_limit_seconds) == (50, 60)
    assert default.placement.extra_args == ("--without-gossip",)
    assert reports.pool == "solo"
    assert spec.broker.keys == KeyScheme("prod:", (0, 5), ":")
    assert spec.pod.host_network is True
    assert spec.beat.scheduler == "redbeat.RedBeatScheduler"
    assert spec.pool("reports") is reports
    assert not default.autoscaling.enabled
    scaled = reports.autoscaling
    assert scaled.enabled  # a section without ``enabled`` autoscales
    assert (scaled.min_replicas, scaled.max_replicas) == (0, 5)
    assert scaled.scale_down == ScalingRules(
        stabilization_window_seconds=60, max_step_percent=100, max_step_pods=0, period_seconds=15
    )
    assert scaled.scale_up == DEFAULT_SCALE_UP
    assert (scaled.fallback_replicas, scaled.fallback_after_seconds) == (2, 30)


INVALID: list[tuple[str, str, Any, str]] = [
    # (case, dotted path to change, new value, expected field path in the error)
    ("no image", "image", None, "spec.image"),
    ("empty image", "image", "", "spec.image"),
    ("app not a module path", "app", "proj celery", "spec.app"),
    ("no broker", "broker", None, "spec.broker"),
    ("no secret name", "broker.urlSecretRef", {}, "spec.broker.urlSecretRef.name"),
    (
        "priority step too big",
        "broker.transportOptions.prioritySteps",
        [0, 300],
        "spec.broker.transportOptions.prioritySteps[1]",
    ),
    (
        "priority steps unsorted",
        "broker.transportOptions.prioritySteps",
        [9, 0],
        "spec.broker.transportOptions.prioritySteps",
    ),
    (
        "priority steps with a duplicate",
        "broker.transportOptions.prioritySteps",
        [0, 3, 3, 9],
        "spec.broker.transportOptions.prioritySteps",
    ),
    ("no workers", "workers", [], "spec.workers"),
    ("workers not a list", "workers", {"name": "x"}, "spec.workers"),
    ("pool name with capitals", "workers.0.name", "Default", "spec.workers[0].name"),
    ("negative replicas", "workers.0.replicas", -1, "spec.workers[0].replicas"),
    ("zero concurrency", "workers.0.concurrency", 0, "spec.workers[0].concurrency"),
    ("concurrency as string", "workers.0.concurrency", "4", "spec.workers[0].concurrency"),
    ("unknown pool type", "workers.0.pool", "processes", "spec.workers[0].pool"),
    ("queue with comma", "workers.0.queues", ["a,b"], "spec.workers[0].queues[0]"),
    ("empty queue list", "workers.0.queues", [], "spec.workers[0].queues"),
    (
        "soft limit not below hard",
        "workers.0.softTimeLimitSeconds",
        60,
        "spec.workers[0].softTimeLimitSeconds",
    ),
    ("env without name", "workers.0.env", [{"value": "x"}], "spec.workers[0].env[0].name"),
    ("bad pull policy", "imagePullPolicy", "Sometimes", "spec.imagePullPolicy"),
    ("hostNetwork not a bool", "podTemplate.hostNetwork", "yes", "spec.podTemplate.hostNetwork"),
    ("unknown persistence", "beat.persistence.type", "hostPath", "spec.beat.persistence.type"),
    ("probes not an object", "probes", "on", "spec.probes"),
    (
        "probe period zero",
        "probes.workerLiveness.periodSeconds",
        0,
        "spec.probes.workerLiveness.periodSeconds",
    ),
    (
        "probe timeout above period",
        "probes.beatLiveness",
        {"periodSeconds": 3, "timeoutSeconds": 4},
        "spec.probes.beatLiveness.timeoutSeconds",
    ),
    (
        "startup timeout too short",
        "probes.startupTimeoutSeconds",
        1,
        "spec.probes.startupTimeoutSeconds",
    ),
    ("broker grace negative", "probes.brokerGraceSeconds", -1, "spec.probes.brokerGraceSeconds"),
    ("autoscaling not an object", "workers.1.autoscaling", True, "spec.workers[1].autoscaling"),
    (
        "autoscaling enabled without maxReplicas",
        "workers.1.autoscaling.maxReplicas",
        None,
        "spec.workers[1].autoscaling.maxReplicas",
    ),
    (
        "autoscaling maxReplicas below minReplicas",
        "workers.1.autoscaling.minReplicas",
        6,
        "spec.workers[1].autoscaling.maxReplicas",
    ),
    (
        "autoscaling maxReplicas zero",
        "workers.1.autoscaling.maxReplicas",
        0,
        "spec.workers[1].autoscaling.maxReplicas",
    ),
    (
        "autoscaling minReplicas negative",
        "workers.1.autoscaling.minReplicas",
        -1,
        "spec.workers[1].autoscaling.minReplicas",
    ),
    (
        "autoscaling targetTasksPerSlot zero",
        "workers.1.autoscaling.targetTasksPerSlot",
        0,
        "spec.workers[1].autoscaling.targetTasksPerSlot",
    ),
    (
        "autoscaling targetTasksPerSlot a string",
        "workers.1.autoscaling.targetTasksPerSlot",
        "2",
        "spec.workers[1].autoscaling.targetTasksPerSlot",
    ),
    (
        "autoscaling targetTasksPerSlot a boolean",
        "workers.1.autoscaling.targetTasksPerSlot",
        True,
        "spec.workers[1].autoscaling.targetTasksPerSlot",
    ),
    (
        "autoscaling pollIntervalSeconds zero",
        "workers.1.autoscaling.pollIntervalSeconds",
        0,
        "spec.workers[1].autoscaling.pollIntervalSeconds",
    ),
    (
        "autoscaling tolerancePercent 100",
        "workers.1.autoscaling.tolerancePercent",
        100,
        "spec.workers[1].autoscaling.tolerancePercent",
    ),
    (
        "autoscaling enabled not a boolean",
        "workers.1.autoscaling.enabled",
        "yes",
        "spec.workers[1].autoscaling.enabled",
    ),
    (
        "autoscaling fallbackReplicas above maxReplicas",
        "workers.1.autoscaling.brokerUnreadable",
        {"fallbackReplicas": 6},
        "spec.workers[1].autoscaling.brokerUnreadable.fallbackReplicas",
    ),
    (
        "autoscaling scaleUp both steps zero",
        "workers.1.autoscaling.scaleUp",
        {"maxStepPercent": 0, "maxStepPods": 0},
        "spec.workers[1].autoscaling.scaleUp.maxStepPods",
    ),
    (
        "autoscaling scaleDown percent zero with the default 0 pods",
        "workers.1.autoscaling.scaleDown",
        {"maxStepPercent": 0},
        "spec.workers[1].autoscaling.scaleDown.maxStepPods",
    ),
    (
        "autoscaling scaleDown window above an hour",
        "workers.1.autoscaling.scaleDown.stabilizationWindowSeconds",
        3601,
        "spec.workers[1].autoscaling.scaleDown.stabilizationWindowSeconds",
    ),
    (
        "autoscaling scaleUp period zero",
        "workers.1.autoscaling.scaleUp",
        {"periodSeconds": 0},
        "spec.workers[1].autoscaling.scaleUp.periodSeconds",
    ),
]


@pytest.mark.parametrize(("case", "path", "value", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_specs_name_the_field(case: str, path: str, value: Any, field: str) -> None:
    del case
    with pytest.raises(SpecError) as raised:
        parse_cluster("demo", with_changes(full_spec(), path, value))
    assert raised.value.path == field
    assert str(raised.value).startswith(f"{field}: ")


def test_unsorted_priority_steps_say_what_was_given() -> None:
    raw = with_changes(minimal_spec(), "broker.transportOptions.prioritySteps", [9, 0])
    with pytest.raises(SpecError) as raised:
        parse_cluster("demo", raw)
    assert str(raised.value) == (
        "spec.broker.transportOptions.prioritySteps: "
        "must be sorted ascending without duplicates (got [9, 0])"
    )


ABOVE = MAX_REPLICAS + 1
ABOVE_THE_BOUND: list[tuple[str, str, Any, str]] = [
    # (case, dotted path to change, new value, expected field path in the error)
    ("replicas", "workers.0.replicas", ABOVE, "spec.workers[0].replicas"),
    (
        "minReplicas",
        "workers.0.autoscaling",
        {"minReplicas": ABOVE, "maxReplicas": MAX_REPLICAS},
        "spec.workers[0].autoscaling.minReplicas",
    ),
    (
        "maxReplicas",
        "workers.0.autoscaling",
        {"maxReplicas": ABOVE},
        "spec.workers[0].autoscaling.maxReplicas",
    ),
    (
        "fallbackReplicas, even with maxReplicas at the bound",
        "workers.0.autoscaling",
        {"maxReplicas": MAX_REPLICAS, "brokerUnreadable": {"fallbackReplicas": ABOVE}},
        "spec.workers[0].autoscaling.brokerUnreadable.fallbackReplicas",
    ),
]


@pytest.mark.parametrize(
    ("case", "path", "value", "field"), ABOVE_THE_BOUND, ids=[c[0] for c in ABOVE_THE_BOUND]
)
def test_replica_counts_above_the_bound_are_refused(
    case: str, path: str, value: Any, field: str
) -> None:
    del case
    with pytest.raises(SpecError) as raised:
        parse_cluster("demo", with_changes(minimal_spec(), path, value))
    assert str(raised.value) == f"{field}: must be ≤ {MAX_REPLICAS} (got {ABOVE})"


def test_replica_counts_at_the_bound_are_accepted() -> None:
    raw = with_changes(minimal_spec(), "workers.0.replicas", MAX_REPLICAS)
    assert parse_cluster("demo", raw).workers[0].replicas == MAX_REPLICAS
    scaled = _autoscaling(
        {
            "minReplicas": MAX_REPLICAS,
            "maxReplicas": MAX_REPLICAS,
            "brokerUnreadable": {"fallbackReplicas": MAX_REPLICAS},
        }
    )
    assert (scaled.min_replicas, scaled.max_replicas, scaled.fallback_replicas) == (
        MAX_REPLICAS,
        MAX_REPLICAS,
        MAX_REPLICAS,
    )


def test_duplicate_pool_names_point_at_the_second() -> None:
    spec = full_spec()
    spec["workers"][1]["name"] = "default"
    with pytest.raises(
        SpecError, match=r"duplicate pool name 'default' \(also spec.workers\[0\]\)"
    ):
        parse_cluster("demo", spec)


def test_names_too_long_for_labels_are_rejected_with_the_resulting_name() -> None:
    with pytest.raises(SpecError) as raised:
        parse_cluster("c" * 40, with_changes(minimal_spec(), "workers.0.name", "p" * 20))
    assert raised.value.path == "spec.workers[0].name"
    assert "would be 68 characters" in raised.value.message


def _autoscaling(section: Any) -> Autoscaling:
    raw = with_changes(minimal_spec(), "workers.0.autoscaling", section)
    return parse_cluster("demo", raw).workers[0].autoscaling


def test_a_pool_without_an_autoscaling_section_does_not_autoscale() -> None:
    assert _autoscaling(None) == Autoscaling()
    assert not Autoscaling().enabled


def test_autoscaling_disabled_needs_no_max_replicas() -> None:
    off = _autoscaling({"enabled": False})
    assert not off.enabled
    assert off.max_replicas >= off.min_replicas
    assert not _autoscaling({"enabled": False, "minReplicas": 3}).enabled


def test_an_autoscaling_section_without_enabled_is_enabled_with_the_defaults() -> None:
    assert _autoscaling({"maxReplicas": 4}) == Autoscaling(enabled=True, max_replicas=4)


def test_autoscaling_reads_every_field() -> None:
    section = {
        "enabled": True,
        "minReplicas": 2,
        "maxReplicas": 12,
        "targetTasksPerSlot": 2.5,
        "activationBacklog": 10,
        "pollIntervalSeconds": 5,
        "tolerancePercent": 0,
        "scaleUp": {"stabilizationWindowSeconds": 30, "maxStepPercent": 50, "maxStepPods": 0},
        "scaleDown": {"maxStepPods": 2, "periodSeconds": 60},
        "brokerUnreadable": {"fallbackReplicas": 12, "afterSeconds": 0},
    }
    assert _autoscaling(section) == Autoscaling(
        enabled=True,
        min_replicas=2,
        max_replicas=12,
        target_tasks_per_slot=2.5,
        activation_backlog=10,
        poll_interval_seconds=5,
        tolerance_percent=0,
        scale_up=ScalingRules(30, 50, 0, 15),
        scale_down=ScalingRules(300, 100, 2, 60),
        fallback_replicas=12,
        fallback_after_seconds=0,
    )


def test_an_integer_target_per_slot_is_read_as_a_number() -> None:
    target = _autoscaling({"maxReplicas": 3, "targetTasksPerSlot": 3}).target_tasks_per_slot
    assert (target, type(target)) == (3.0, float)


def test_flower_needs_a_login_secret_when_enabled() -> None:
    with pytest.raises(SpecError) as raised:
        parse_cluster("demo", {**minimal_spec(), "flower": {"enabled": True}})
    assert raised.value.path == "spec.flower.basicAuthSecretRef.name"
    off = parse_cluster("demo", {**minimal_spec(), "flower": {"enabled": False}})
    assert not off.flower.enabled
    on = parse_cluster(
        "demo",
        {**minimal_spec(), "flower": {"enabled": True, "basicAuthSecretRef": {"name": "login"}}},
    )
    assert (on.flower.secret_name, on.flower.secret_key, on.flower.port) == ("login", "auth", 5555)
    with pytest.raises(SpecError) as low:
        parse_cluster("demo", {**minimal_spec(), "flower": {"port": 80}})
    assert low.value.path == "spec.flower.port"
