"""The CRD is the API's source of truth: the operator's defaults must be the schema's."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from celery_operator import spec as specmod
from celery_operator.queues import DEFAULT_PRIORITY_STEPS, DEFAULT_SEPARATOR
from celery_operator.spec import parse_cluster
from tests.unit.samples import full_spec, minimal_spec
from tests.unit.test_crd_schema import CRD, with_defaults


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    [version] = crd["spec"]["versions"]
    found: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return found


def _at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def _timing_defaults(name: str, timing: specmod.ProbeTiming) -> list[tuple[str, Any]]:
    return [
        (f"probes.{name}.enabled", timing.enabled),
        (f"probes.{name}.periodSeconds", timing.period_seconds),
        (f"probes.{name}.timeoutSeconds", timing.timeout_seconds),
        (f"probes.{name}.failureThreshold", timing.failure_threshold),
    ]


def _rules_defaults(name: str, rules: specmod.ScalingRules) -> list[tuple[str, Any]]:
    return [
        (f"workers.[].autoscaling.{name}", {}),
        (
            f"workers.[].autoscaling.{name}.stabilizationWindowSeconds",
            rules.stabilization_window_seconds,
        ),
        (f"workers.[].autoscaling.{name}.maxStepPercent", rules.max_step_percent),
        (f"workers.[].autoscaling.{name}.maxStepPods", rules.max_step_pods),
        (f"workers.[].autoscaling.{name}.periodSeconds", rules.period_seconds),
    ]


@pytest.mark.parametrize("make", [minimal_spec, full_spec])
def test_a_spec_defaulted_by_the_schema_parses_as_the_operator_defaults_it(
    schema: dict[str, Any], make: Any
) -> None:
    raw = make()
    defaulted = with_defaults(schema, copy.deepcopy(raw))
    assert defaulted != raw  # the schema did default something
    assert parse_cluster("demo", defaulted) == parse_cluster("demo", raw)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("imagePullPolicy", specmod.DEFAULT_IMAGE_PULL_POLICY),
        ("broker.urlSecretRef.key", specmod.DEFAULT_SECRET_KEY),
        ("broker.transportOptions.prioritySteps", list(DEFAULT_PRIORITY_STEPS)),
        ("broker.transportOptions.separator", DEFAULT_SEPARATOR),
        ("broker.transportOptions.globalKeyprefix", ""),
        ("workers.[].queues", list(specmod.DEFAULT_QUEUES)),
        ("workers.[].replicas", specmod.DEFAULT_REPLICAS),
        ("workers.[].concurrency", specmod.DEFAULT_CONCURRENCY),
        ("workers.[].pool", specmod.DEFAULT_POOL),
        ("workers.[].terminationGracePeriodSeconds", specmod.DEFAULT_WORKER_GRACE_SECONDS),
        ("workers.[].autoscaling", None),  # a default would autoscale every pool
        ("workers.[].autoscaling.enabled", True),
        ("workers.[].autoscaling.minReplicas", specmod.DEFAULT_MIN_REPLICAS),
        ("workers.[].autoscaling.maxReplicas", None),
        ("workers.[].autoscaling.targetTasksPerSlot", specmod.DEFAULT_TARGET_TASKS_PER_SLOT),
        ("workers.[].autoscaling.activationBacklog", specmod.DEFAULT_ACTIVATION_BACKLOG),
        ("workers.[].autoscaling.pollIntervalSeconds", specmod.DEFAULT_POLL_INTERVAL_SECONDS),
        ("workers.[].autoscaling.tolerancePercent", specmod.DEFAULT_TOLERANCE_PERCENT),
        *_rules_defaults("scaleUp", specmod.DEFAULT_SCALE_UP),
        *_rules_defaults("scaleDown", specmod.DEFAULT_SCALE_DOWN),
        ("workers.[].autoscaling.brokerUnreadable", {}),
        ("workers.[].autoscaling.brokerUnreadable.fallbackReplicas", None),
        (
            "workers.[].autoscaling.brokerUnreadable.afterSeconds",
            specmod.DEFAULT_FALLBACK_AFTER_SECONDS,
        ),
        ("beat.enabled", True),
        ("beat.terminationGracePeriodSeconds", specmod.DEFAULT_BEAT_GRACE_SECONDS),
        ("beat.persistence.type", specmod.DEFAULT_BEAT_PERSISTENCE),
        ("beat.persistence.size", specmod.DEFAULT_BEAT_PERSISTENCE_SIZE),
        ("probes.enabled", True),
        ("flower.enabled", False),
        ("flower.basicAuthSecretRef.key", specmod.DEFAULT_FLOWER_SECRET_KEY),
        ("flower.port", specmod.DEFAULT_FLOWER_PORT),
        ("probes.startupTimeoutSeconds", specmod.DEFAULT_STARTUP_TIMEOUT_SECONDS),
        ("probes.brokerGraceSeconds", specmod.DEFAULT_BROKER_GRACE_SECONDS),
        *_timing_defaults("workerLiveness", specmod.DEFAULT_WORKER_LIVENESS),
        *_timing_defaults("workerReadiness", specmod.DEFAULT_WORKER_READINESS),
        *_timing_defaults("beatLiveness", specmod.DEFAULT_BEAT_LIVENESS),
    ],
)
def test_default(schema: dict[str, Any], path: str, expected: Any) -> None:
    assert _at(schema, path).get("default") == expected


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("imagePullPolicy", specmod.PULL_POLICIES),
        ("workers.[].pool", specmod.POOL_TYPES),
        ("beat.persistence.type", specmod.PERSISTENCE_TYPES),
    ],
)
def test_enums(schema: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
    assert tuple(_at(schema, path)["enum"]) == allowed
