"""Spec samples shared by the unit tests."""

from __future__ import annotations

import copy
from typing import Any

from celery_operator.builders import Owner

OWNER = Owner(
    api_version="celeryoperator.dev/v1alpha1",
    kind="CeleryCluster",
    name="demo",
    namespace="apps",
    uid="0f0e0d0c-0000-4000-8000-000000000001",
)


def minimal_spec() -> dict[str, Any]:
    return {
        "image": "registry.example/app:1.2.3",
        "app": "proj.celery:app",
        "broker": {"urlSecretRef": {"name": "broker"}},
        "workers": [{"name": "default"}],
    }


def full_spec() -> dict[str, Any]:
    spec = minimal_spec()
    spec["env"] = [{"name": "SHARED", "value": "1"}, {"name": "LEVEL", "value": "cluster"}]
    spec["podTemplate"] = {"hostNetwork": True, "labels": {"team": "data"}}
    spec["broker"]["transportOptions"] = {
        "globalKeyprefix": "prod:",
        "prioritySteps": [0, 5],
        "separator": ":",
    }
    spec["workers"] = [
        {
            "name": "default",
            "queues": ["celery", "emails"],
            "replicas": 3,
            "concurrency": 8,
            "maxTasksPerChild": 100,
            "softTimeLimitSeconds": 50,
            "timeLimitSeconds": 60,
            "env": [{"name": "LEVEL", "value": "pool"}],
            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
            "extraArgs": ["--without-gossip"],
            "podTemplate": {"labels": {"tier": "batch"}},
        },
        {
            "name": "reports",
            "queues": ["reports"],
            "pool": "solo",
            "concurrency": 1,
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 5,
                "scaleDown": {"stabilizationWindowSeconds": 60},
                "brokerUnreadable": {"fallbackReplicas": 2},
            },
        },
    ]
    spec["beat"] = {"scheduler": "redbeat.RedBeatScheduler"}
    return spec


def with_changes(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``spec`` with ``value`` at a dotted path (``workers.0.name``)."""
    out = copy.deepcopy(spec)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out
