from __future__ import annotations

import json
from typing import Any

from celery_operator import builders, naming
from celery_operator.spec import parse_cluster
from tests.unit.samples import OWNER, full_spec, minimal_spec, with_changes


def _children(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    objs = builders.desired_children(OWNER, parse_cluster(OWNER.name, spec))
    return {o["metadata"]["name"]: o for o in objs}


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(obj: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(obj)["env"]}


def test_one_deployment_per_pool_and_one_beat_statefulset() -> None:
    children = _children(full_spec())
    assert {(o["kind"], name) for name, o in children.items()} == {
        ("Deployment", "demo-worker-default"),
        ("Deployment", "demo-worker-reports"),
        ("StatefulSet", "demo-beat"),
    }


def test_beat_disabled_builds_no_statefulset() -> None:
    children = _children(with_changes(minimal_spec(), "beat", {"enabled": False}))
    assert list(children) == ["demo-worker-default"]


def test_worker_command_line() -> None:
    worker = _children(full_spec())["demo-worker-default"]
    container = _container(worker)
    assert container["command"] == ["celery-probe", "run"]
    assert container["args"] == [
        "-A", "proj.celery:app", "worker",
        "--hostname", "default@$(POD_NAME)",
        "--queues", "celery,emails",
        "--concurrency", "8", "--pool", "prefork", "--loglevel", "INFO",
        "--task-events",
        "--max-tasks-per-child", "100",
        "--soft-time-limit", "50", "--time-limit", "60",
        "--without-gossip",
    ]  # fmt: skip


def test_beat_command_line_has_no_pidfile_and_the_scheduler() -> None:
    args = _container(_children(full_spec())["demo-beat"])["args"]
    assert args[:3] == ["-A", "proj.celery:app", "beat"]
    assert "--pidfile=" in args
    assert args[args.index("--scheduler") + 1] == "redbeat.RedBeatScheduler"
    assert args[args.index("--schedule") + 1].startswith(builders.BEAT_SCHEDULE_DIR)


def test_beat_is_a_single_replica_statefulset_with_its_schedule_volume() -> None:
    beat = _children(minimal_spec())["demo-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["podManagementPolicy"] == "OrderedReady"
    volumes = beat["spec"]["template"]["spec"]["volumes"]
    assert volumes == [
        {"name": builders.BEAT_SCHEDULE_VOLUME, "emptyDir": {}},
        {"name": builders.PROBE_STATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]
    assert "volumeClaimTemplates" not in beat["spec"]


def test_beat_persistent_volume_claim() -> None:
    spec = with_changes(
        minimal_spec(), "beat", {"persistence": {"type": "persistentVolumeClaim", "size": "1Gi"}}
    )
    beat = _children(spec)["demo-beat"]
    claims = beat["spec"]["volumeClaimTemplates"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    volumes = beat["spec"]["template"]["spec"]["volumes"]
    assert [v["name"] for v in volumes] == [builders.PROBE_STATE_VOLUME]


def test_broker_url_comes_from_the_secret_and_transport_options_as_json() -> None:
    env = _env(_children(full_spec())["demo-worker-default"])
    assert env["CELERY_BROKER_URL"] == {"secretKeyRef": {"name": "broker", "key": "url"}}
    assert json.loads(env["CELERY_BROKER_TRANSPORT_OPTIONS"]) == {
        "global_keyprefix": "prod:",
        "priority_steps": [0, 5],
        "sep": ":",
    }
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_pool_env_wins_over_cluster_env_without_duplicates() -> None:
    worker = _children(full_spec())["demo-worker-default"]
    names = [e["name"] for e in _container(worker)["env"]]
    assert len(names) == len(set(names))
    assert _env(worker)["LEVEL"] == "pool"
    assert _env(worker)["SHARED"] == "1"


def test_labels_owner_and_selector() -> None:
    worker = _children(full_spec())["demo-worker-default"]
    meta = worker["metadata"]
    assert meta["ownerReferences"] == [OWNER.reference()]
    assert meta["labels"][naming.MANAGED_BY_LABEL] == "celery-operator"
    selector = worker["spec"]["selector"]["matchLabels"]
    assert selector == naming.worker_selector("demo", "default")
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert pod_labels["team"] == "data"
    assert pod_labels["tier"] == "batch"


def test_user_labels_cannot_break_the_selector() -> None:
    spec = with_changes(
        minimal_spec(), "workers.0.podTemplate", {"labels": {naming.POOL_LABEL: "other"}}
    )
    worker = _children(spec)["demo-worker-default"]
    assert worker["spec"]["template"]["metadata"]["labels"][naming.POOL_LABEL] == "default"


def test_host_network_sets_the_dns_policy_that_keeps_cluster_dns() -> None:
    pod = _children(full_spec())["demo-worker-reports"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    plain = _children(minimal_spec())["demo-worker-default"]["spec"]["template"]["spec"]
    assert "hostNetwork" not in plain
    assert "dnsPolicy" not in plain


def test_warm_shutdown_window_and_no_unavailable_workers_during_rollout() -> None:
    worker = _children(minimal_spec())["demo-worker-default"]
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_built_objects_have_no_empty_values_and_a_stable_hash() -> None:
    first = _children(full_spec())
    second = _children(full_spec())
    assert first == second

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key != "emptyDir":
                    assert item not in (None, {}, []), f"{path}.{key} is empty"
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    for name, obj in first.items():
        walk(obj, name)
        assert obj["metadata"]["annotations"][naming.SPEC_HASH_ANNOTATION] == builders.spec_hash(
            obj
        )


def test_any_spec_change_changes_the_hash_of_the_affected_child_only() -> None:
    before = _children(full_spec())
    after = _children(with_changes(full_spec(), "workers.1.concurrency", 2))
    hashes = {
        n: o["metadata"]["annotations"][naming.SPEC_HASH_ANNOTATION] for n, o in before.items()
    }
    changed = {
        n
        for n, o in after.items()
        if o["metadata"]["annotations"][naming.SPEC_HASH_ANNOTATION] != hashes[n]
    }
    assert changed == {"demo-worker-reports"}


def test_celery_is_not_pid_1_so_an_early_sigterm_is_not_ignored() -> None:
    for obj in _children(minimal_spec()).values():
        assert obj["spec"]["template"]["spec"]["shareProcessNamespace"] is True


def test_workers_get_startup_liveness_and_readiness_exec_probes() -> None:
    container = _container(_children(full_spec())["demo-worker-default"])
    assert container["livenessProbe"] == {
        "exec": {
            "command": [
                *("celery-probe", "worker-live", "--broker-grace", "30"),
                *("--broker-timeout", "2"),  # the check's own 2 s: well within the 5 s timeout
            ]
        },
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
        "successThreshold": 1,
        "terminationGracePeriodSeconds": builders.LIVENESS_KILL_GRACE_SECONDS,
    }
    ready = container["readinessProbe"]
    assert ready["exec"]["command"] == [
        "celery-probe", "worker-ready", "--queues", "celery,emails"
    ]  # fmt: skip
    assert (ready["periodSeconds"], ready["failureThreshold"]) == (5, 2)
    startup = container["startupProbe"]
    assert startup["exec"]["command"] == ["celery-probe", "worker-live", "--broker-timeout", "1"]
    # 120 s of startup at one check every 2 s.
    assert (startup["periodSeconds"], startup["failureThreshold"]) == (2, 60)
    assert _env(_children(full_spec())["demo-worker-default"])["CELERY_PROBE_DIR"] == (
        builders.PROBE_STATE_DIR
    )
    assert {"name": builders.PROBE_STATE_VOLUME, "mountPath": builders.PROBE_STATE_DIR} in (
        container["volumeMounts"]
    )


def test_beat_gets_a_liveness_probe_and_a_bounded_sleep() -> None:
    container = _container(_children(full_spec())["demo-beat"])
    assert container["command"] == ["celery-probe", "run"]
    assert container["livenessProbe"]["exec"]["command"] == [
        *("celery-probe", "beat-live", "--broker-timeout", "2")
    ]
    assert container["startupProbe"]["exec"]["command"][-2:] == ["--broker-timeout", "1"]
    assert "readinessProbe" not in container
    args = container["args"]
    assert args[args.index("--max-interval") + 1] == str(builders.BEAT_MAX_INTERVAL_SECONDS)


def test_probe_timings_come_from_the_spec() -> None:
    spec = with_changes(
        full_spec(),
        "probes",
        {
            "startupTimeoutSeconds": 301,
            "brokerGraceSeconds": 0,
            "workerLiveness": {"periodSeconds": 20, "failureThreshold": 5, "timeoutSeconds": 2},
            "workerReadiness": {"enabled": False},
        },
    )
    container = _container(_children(spec)["demo-worker-default"])
    live = container["livenessProbe"]
    command = live["exec"]["command"]
    assert command[command.index("--broker-grace") + 1] == "0"
    # A 2 s kubelet timeout leaves the broker attempt half of it.
    assert command[command.index("--broker-timeout") + 1] == "1"
    assert (live["periodSeconds"], live["failureThreshold"], live["timeoutSeconds"]) == (20, 5, 2)
    assert container["startupProbe"]["failureThreshold"] == 151  # rounded up: never shorter
    assert "readinessProbe" not in container


def test_probes_opt_out_runs_plain_celery_without_probes() -> None:
    children = _children(with_changes(full_spec(), "probes", {"enabled": False}))
    for child in children.values():
        container = _container(child)
        assert container["command"] == ["celery"]
        assert not {"livenessProbe", "readinessProbe", "startupProbe"} & container.keys()
        assert "CELERY_PROBE_DIR" not in _env(child)
        volumes = child["spec"]["template"]["spec"].get("volumes", [])
        assert builders.PROBE_STATE_VOLUME not in [v["name"] for v in volumes]
    assert "--max-interval" not in _container(children["demo-beat"])["args"]


def test_user_max_interval_comes_after_the_operators() -> None:
    spec = with_changes(full_spec(), "beat.extraArgs", ["--max-interval", "60"])
    args = _container(_children(spec)["demo-beat"])["args"]
    assert args[-2:] == ["--max-interval", "60"]  # Celery takes the last one


FLOWER = {"enabled": True, "basicAuthSecretRef": {"name": "flower-login"}, "port": 5600}


def test_flower_runs_behind_the_secret_s_login_with_a_service_in_front() -> None:
    spec = full_spec()
    spec["flower"] = FLOWER
    children = builders.desired_children(OWNER, parse_cluster("demo", spec))
    flower = {o["kind"]: o for o in children if o["metadata"]["name"] == "demo-flower"}
    deployment, service = flower["Deployment"], flower["Service"]
    container = _container(deployment)
    assert container["args"] == ["-A", "proj.celery:app", "flower", "--port=5600"]
    assert _env(deployment)["FLOWER_BASIC_AUTH"] == {
        "secretKeyRef": {"name": "flower-login", "key": "auth"}
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthcheck", "port": 5600}
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True  # the cluster-wide podTemplate applies to Flower too
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels[naming.COMPONENT_LABEL] == naming.FLOWER
    assert service["metadata"]["name"] == "demo-flower"
    assert service["spec"]["selector"] == naming.flower_selector("demo")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 5600, "targetPort": 5600, "protocol": "TCP"}
    ]


def test_no_flower_unless_enabled() -> None:
    children = builders.desired_children(OWNER, parse_cluster("demo", full_spec()))
    assert not any(naming.FLOWER in o["metadata"]["name"] for o in children)
    assert not any(o["kind"] == "Service" for o in children)


# --- Pod Security: the restricted standard by default --------------------------------------------

_RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def _restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the ``restricted`` Pod Security Standard (Kubernetes 1.33) refuses in a pod spec,
    checked the way the admission controller does: a container's own securityContext first,
    then the pod's."""
    found = []
    pod_security = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(flag)
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    for container in pod["containers"]:
        own = container.get("securityContext") or {}
        name = container["name"]

        def setting(key: str, own: dict[str, Any] = own) -> Any:
            return own[key] if key in own else pod_security.get(key)

        if own.get("privileged"):
            found.append(f"{name}: privileged")
        if own.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation not false")
        capabilities = own.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities not dropped")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added")
        if setting("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot not true")
        if setting("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = (setting("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile {seccomp}")
        if any("hostPort" in port for port in container.get("ports") or []):
            found.append(f"{name}: hostPort")
    return found


def _pods(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    objs = builders.desired_children(OWNER, parse_cluster("demo", spec))
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objs
        if o["kind"] in ("Deployment", "StatefulSet")
    }


def test_every_pod_meets_the_restricted_standard_without_a_security_context_in_the_spec() -> None:
    spec = with_changes(minimal_spec(), "flower", FLOWER)
    spec["workers"].append({"name": "reports", "queues": ["reports"]})
    spec["beat"] = {"persistence": {"type": "persistentVolumeClaim"}}
    pods = _pods(spec)
    assert set(pods) == {"demo-worker-default", "demo-worker-reports", "demo-beat", "demo-flower"}
    for name, pod in pods.items():
        assert _restricted_violations(pod) == [], name
        assert pod["securityContext"]["runAsUser"] == builders.IMAGE_USER  # the image's user
        assert pod["automountServiceAccountToken"] is False, name  # Celery needs no token


def test_the_restricted_check_catches_what_admission_would_refuse() -> None:
    """The check above can fail: host networking (this project's local cluster) is refused."""
    pod = _pods(full_spec())["demo-worker-default"]
    assert _restricted_violations(pod) == ["hostNetwork"]
    pod["securityContext"] = {"runAsUser": 0}
    pod["containers"][0]["securityContext"] = {"capabilities": {"add": ["SYS_ADMIN"]}}
    assert _restricted_violations(pod) == [
        "hostNetwork",
        "worker: allowPrivilegeEscalation not false",
        "worker: capabilities not dropped",
        "worker: capabilities added",
        "worker: runAsNonRoot not true",
        "worker: runAsUser 0",
        "worker: seccompProfile None",
    ]


def test_a_spec_s_own_security_context_replaces_the_default_whole() -> None:
    spec = with_changes(
        minimal_spec(),
        "podTemplate",
        {
            "securityContext": {"runAsUser": 0},
            "containerSecurityContext": {"readOnlyRootFilesystem": True},
            "serviceAccountName": "celery-app",
            "automountServiceAccountToken": True,
        },
    )
    pod = _pods(spec)["demo-worker-default"]
    assert pod["securityContext"] == {"runAsUser": 0}
    assert pod["containers"][0]["securityContext"] == {"readOnlyRootFilesystem": True}
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("celery-app", True)
    # A pool's own podTemplate wins over the cluster's, field by field.
    pool = {"name": "default", "podTemplate": {"automountServiceAccountToken": False}}
    pod = _pods(with_changes(spec, "workers", [pool]))["demo-worker-default"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsUser": 0}
