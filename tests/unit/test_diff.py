from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from celery_operator import builders, naming
from celery_operator.diff import first_difference, parse_quantity, plan, stuck_beat_pod
from celery_operator.spec import parse_cluster
from tests.unit.samples import OWNER, full_spec, with_changes


def _desired(spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return builders.desired_children(OWNER, parse_cluster(OWNER.name, spec or full_spec()))


def _as_served(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server hands back after applying ``obj``: defaults, status, normalisation."""
    live = copy.deepcopy(obj)
    live["metadata"].update(
        uid="child-uid",
        resourceVersion="42",
        generation=1,
        managedFields=[{"manager": naming.MANAGER}],
    )
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    spec = live["spec"]
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    pod = spec["template"]["spec"]
    pod.update(restartPolicy="Always", schedulerName="default-scheduler")
    pod.setdefault("securityContext", {})
    pod.pop("hostNetwork", None) if pod.get("hostNetwork") is False else None
    for container in pod["containers"]:
        container.update(terminationMessagePath="/dev/termination-log")
        requests = container.get("resources", {}).get("requests", {})
        if requests.get("cpu") == "0.5":
            requests["cpu"] = "500m"
    live["status"] = {"replicas": spec.get("replicas", 1), "observedGeneration": 1}
    return live


def test_unchanged_children_plan_no_writes() -> None:
    desired = _desired()
    live = [_as_served(o) for o in desired]
    assert plan(desired, live, OWNER.uid) == []


def test_missing_child_is_created() -> None:
    desired = _desired()
    live = [_as_served(o) for o in desired[1:]]
    [action] = plan(desired, live, OWNER.uid)
    assert (action.verb, action.name) == ("create", desired[0]["metadata"]["name"])


def test_hand_edit_of_an_owned_field_is_repaired() -> None:
    desired = _desired()
    live = [_as_served(o) for o in desired]
    live[0]["spec"]["template"]["spec"]["containers"][0]["args"][7] = "99"  # --concurrency
    [action] = plan(desired, live, OWNER.uid)
    assert action.verb == "update"
    assert action.reason == "drift at spec.template.spec.containers[0].args[7]"


def test_fields_the_operator_does_not_own_are_left_alone() -> None:
    desired = _desired()
    live = [_as_served(o) for o in desired]
    live[0]["metadata"]["labels"]["owner-team"] = "payments"
    live[0]["spec"]["template"]["metadata"].setdefault("annotations", {})["kubectl/restartedAt"] = (
        "x"
    )
    assert plan(desired, live, OWNER.uid) == []


def test_spec_change_that_only_removes_something_is_applied() -> None:
    before = _desired()
    live = [_as_served(o) for o in before]
    spec = full_spec()
    del spec["workers"][0]["extraArgs"]
    after = _desired(spec)
    actions = plan(after, live, OWNER.uid)
    assert [(a.verb, a.name, a.reason) for a in actions] == [
        ("update", "demo-worker-default", "spec changed")
    ]


def test_removed_pool_is_deleted_but_foreign_objects_are_not() -> None:
    desired = _desired()
    live = [_as_served(o) for o in desired]
    foreign = copy.deepcopy(live[1])
    foreign["metadata"]["name"] = "someone-elses"
    foreign["metadata"]["ownerReferences"] = [{"uid": "another", "controller": True}]
    remaining = _desired(with_changes(full_spec(), "workers", [full_spec()["workers"][0]]))
    actions = plan(remaining, [*live, foreign], OWNER.uid)
    assert [(a.verb, a.name) for a in actions] == [("delete", "demo-worker-reports")]


@pytest.mark.parametrize(
    ("desired", "live", "differs"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": 1}, {"a": 2}, True),
        ({"a": [1, 2]}, {"a": [1, 2, 3]}, True),
        ({"a": [{"x": 1}]}, {"a": [{"x": 1, "y": 2}]}, False),
        ({"flag": False}, {}, False),  # omitempty
        ({"count": 0}, {}, False),
        ({"flag": True}, {}, True),
        (
            {"spec": {"resources": {"limits": {"memory": "1Gi"}}}},
            {"spec": {"resources": {"limits": {"memory": "1024Mi"}}}},
            False,
        ),
        (
            {"spec": {"resources": {"requests": {"cpu": "0.5"}}}},
            {"spec": {"resources": {"requests": {"cpu": "500m"}}}},
            False,
        ),
        (
            {"spec": {"resources": {"requests": {"cpu": "1"}}}},
            {"spec": {"resources": {"requests": {"cpu": "2"}}}},
            True,
        ),
        ({"args": ["1"]}, {"args": [1]}, True),  # no quantity leniency outside resources
    ],
)
def test_first_difference(desired: Any, live: Any, differs: bool) -> None:
    assert (first_difference(desired, live) is not None) is differs


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("1Gi", Decimal(2**30)),
        ("2", Decimal(2)),
        (3, Decimal(3)),
        ("1e3", Decimal(1000)),
        ("1k", Decimal(1000)),
        ("abc", None),
        (True, None),
    ],
)
def test_parse_quantity(text: Any, value: Decimal | None) -> None:
    assert parse_quantity(text) == value


def test_child_being_deleted_is_waited_for_not_written() -> None:
    desired = _desired()
    live = [_as_served(o) for o in desired]
    live[2]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    live[2]["spec"]["replicas"] = 5
    assert plan(desired, live, OWNER.uid) == []
    assert plan(desired[:2], live, OWNER.uid) == []


def _beat_pod(revision: str, ready: bool, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "demo-beat-0", "labels": {"controller-revision-hash": revision}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


@pytest.mark.parametrize(
    ("current", "update", "pod", "expected"),
    [
        ("r1", "r1", _beat_pod("r1", ready=False), None),  # no rollout under way
        ("r1", "r2", _beat_pod("r1", ready=True), None),  # the controller rolls a ready pod
        ("r1", "r2", _beat_pod("r1", ready=False), "demo-beat-0"),  # stuck: replace it
        ("r1", "r2", _beat_pod("r2", ready=False), None),  # already the new revision
        ("r1", "r2", _beat_pod("r1", ready=False, deleting=True), None),
    ],
)
def test_stuck_beat_pod(
    current: str, update: str, pod: dict[str, Any], expected: str | None
) -> None:
    sts = {"status": {"currentRevision": current, "updateRevision": update}}
    assert stuck_beat_pod(sts, [pod]) == expected
    assert stuck_beat_pod(None, [pod]) is None
