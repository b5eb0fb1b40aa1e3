"""The operator under test and its CeleryClusters: fixtures shared by the e2e modules.

The operator runs in the test process through ``kopf.testing.KopfRunner``, each test in a namespace
of its own that it alone watches. ``tests/e2e/conftest.py`` makes the fixtures visible to every
e2e module."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery import Celery
from kopf.testing import KopfRunner
from kubernetes import client

from celery_operator import GROUP, PLURAL, VERSION, naming
from tests.e2e import rbac
from tests.e2e.kube import wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "celeryoperator.dev_celeryclusters.yaml"
TASKS = "celery_demo.tasks"


def _plain(api_client: client.ApiClient, obj: object) -> Any:
    """A client model as the plain JSON dict the API served."""
    return api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def crd(api_client: client.ApiClient) -> None:
    """Install (or update) the project's CRD and wait until it is served."""
    body = yaml.safe_load(CRD.read_text())
    ext = client.ApiextensionsV1Api(api_client)
    try:
        ext.create_custom_resource_definition(body)
    except client.ApiException as error:
        if error.status != 409:
            raise
        live = _plain(api_client, ext.read_custom_resource_definition(body["metadata"]["name"]))
        body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)

    def established() -> bool:
        got = _plain(api_client, ext.read_custom_resource_definition(body["metadata"]["name"]))
        return any(
            c["type"] == "Established" and c["status"] == "True"
            for c in got.get("status", {}).get("conditions", [])
        )

    wait_for(established, timeout=30, message="CRD not established")


@pytest.fixture
def liveness_port() -> int:
    return _free_port()


NAMESPACED_INSTALL = ROOT / "deploy" / "namespaced"
OPERATOR_ACCOUNT = "celery-operator"  # the ServiceAccount of deploy/operator


@pytest.fixture
def operator(
    crd: None,
    api_client: client.ApiClient,
    kubeconfig: str,
    namespace: str,
    liveness_port: int,
    tmp_path: Path,
) -> Iterator[KopfRunner]:
    """The real operator, in this process, watching the test's namespace only (test sessions
    sharing one cluster then never reconcile each other's clusters), installed there as a user
    installs it for one namespace: deploy/namespaced's ServiceAccount, Role and RoleBinding, and
    logged in with nothing but a token of that ServiceAccount. Every e2e test so runs under the
    namespaced install's RBAC, and any 403 in the operator's log fails the test."""
    rendered = rbac.kustomize_in_namespace(NAMESPACED_INSTALL, namespace, tmp_path / "install")
    rbac.kubectl_apply(kubeconfig, rbac.pick(rendered, "ServiceAccount", "Role", "RoleBinding"))
    scoped = rbac.service_account_kubeconfig(
        api_client, kubeconfig, namespace, OPERATOR_ACCOUNT, tmp_path / "operator.kubeconfig"
    )
    with run_operator_as(scoped, kubeconfig, namespace, liveness_port) as runner:
        yield runner
    refused = rbac.refusals(runner.output)
    assert not refused, "the namespaced Role lacks what the operator used:\n" + "\n".join(refused)


@contextlib.contextmanager
def run_operator_as(
    scoped_kubeconfig: Path,
    admin_kubeconfig: str,
    namespace: str,
    liveness_port: int,
    watch: str | None = None,
) -> Iterator[KopfRunner]:
    """The operator logged in through ``scoped_kubeconfig`` only, watching ``watch`` (default:
    the namespace by name; a glob makes Kopf discover namespaces and CRDs)."""
    with rbac.kubeconfig_for_this_process(scoped_kubeconfig, admin_kubeconfig):
        yield from _run_operator(namespace, liveness_port, watch)


def _run_operator(
    namespace: str, liveness_port: int, watch: str | None = None
) -> Iterator[KopfRunner]:
    watch = watch or namespace
    os.environ["CELERY_OPERATOR_RECONCILE_INTERVAL_SECONDS"] = "3"
    os.environ["CELERY_OPERATOR_HEALTH_INTERVAL_SECONDS"] = "3"
    # One operator per test in this process: a fixed metrics port would be taken by the first.
    os.environ["CELERY_OPERATOR_METRICS_PORT"] = "0"
    # The operator's own view of what kopf's --namespace below says (python -m celery_operator
    # sets both from its one flag): a namespace named outright turns Kopf's discovery off.
    os.environ["CELERY_OPERATOR_NAMESPACES"] = watch
    args = [
        "run", f"--namespace={watch}", "--standalone", "--verbose",
        f"--liveness=http://127.0.0.1:{liveness_port}/healthz",
        "-m", "celery_operator.handlers",
    ]  # fmt: skip
    with KopfRunner(args, timeout=60) as runner:
        wait_for(lambda: _healthy(liveness_port), timeout=60, message="operator not live")
        yield runner
    assert runner.exception is None, runner.exception
    assert "Traceback" not in runner.output, runner.output[-5000:]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class Clusters:
    """CeleryCluster objects in one test namespace, through the real API."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.api_client = api_client
        self.api = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace

    def plain(self, obj: object) -> Any:
        return _plain(self.api_client, obj)

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CeleryCluster",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }
        created: dict[str, Any] = self.plain(
            self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        )
        return created

    def get(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = self.plain(
            self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        )
        return got

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        for cond in self.get(name).get("status", {}).get("conditions", []):
            if cond["type"] == type_:
                found: dict[str, Any] = cond
                return found
        return {}

    def phase(self, name: str) -> str:
        return str(self.get(name).get("status", {}).get("phase", ""))

    def wait_phase(self, name: str, phase: str, timeout: float = 180) -> None:
        wait_for(
            lambda: self.phase(name) == phase,
            timeout=timeout,
            message=f"{name} never became {phase}",
        )

    def deployments(self) -> dict[str, Any]:
        items = self.plain(self.apps.list_namespaced_deployment(self.namespace))["items"]
        return {d["metadata"]["name"]: d for d in items}

    def statefulsets(self) -> dict[str, Any]:
        items = self.plain(self.apps.list_namespaced_stateful_set(self.namespace))["items"]
        return {s["metadata"]["name"]: s for s in items}

    def pods(self, selector: str) -> list[Any]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        return list(self.plain(pods)["items"])

    def args(self, deployment: str) -> list[str]:
        spec = self.deployments()[deployment]["spec"]["template"]["spec"]
        return list(spec["containers"][0]["args"])

    def event_messages(self, reason: str, involved: str | None = None) -> list[str]:
        """Messages of this namespace's Events with ``reason`` (about ``involved``, if named)."""
        selector = f"reason={reason}" + (f",involvedObject.name={involved}" if involved else "")
        events = self.core.list_namespaced_event(self.namespace, field_selector=selector)
        return [e.message or "" for e in events.items]

    def put_secret(self, name: str, data: dict[str, str]) -> None:
        encoded: dict[str, bytes | str] = {
            k: base64.b64encode(v.encode()).decode() for k, v in data.items()
        }
        self.core.create_namespaced_secret(
            self.namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name), data=encoded)
        )


@pytest.fixture
def clusters(api_client: client.ApiClient, namespace: str) -> Clusters:
    return Clusters(api_client, namespace)


def demo_spec(image: str, host_network: bool, **pool: Any) -> dict[str, Any]:
    """A working spec for the demo app, its broker URL in Secret ``broker``; keywords change
    workers[0]."""
    spec: dict[str, Any] = {
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "app": "celery_demo",
        "broker": {"urlSecretRef": {"name": "broker"}},
        "env": [{"name": "CELERY_DEMO_BEAT_INTERVAL", "value": "2"}],
        "workers": [{"name": "default", "queues": ["celery"], "concurrency": 2, **pool}],
        "beat": {"enabled": True},
    }
    if host_network:
        spec["podTemplate"] = {"hostNetwork": True}
    return spec


@pytest.fixture
def sample_spec(
    clusters: Clusters, redis_url: str, worker_image: str, host_network: bool
) -> Callable[..., dict[str, Any]]:
    """demo_spec with its broker Secret in place; keywords change workers[0]."""
    clusters.put_secret("broker", {"url": redis_url})

    def make(**pool: Any) -> dict[str, Any]:
        return demo_spec(worker_image, host_network, **pool)

    return make


def _celery(redis_url: str) -> Celery:
    return Celery("e2e-client", broker=redis_url, backend=redis_url)


def use_every_verb(clusters: Clusters, sample_spec: Callable[..., dict[str, Any]]) -> None:
    """Make the operator use each permission of its RBAC at least once: read the broker and
    Flower Secrets, create, patch and delete Deployments and a Service, write status, post
    Events, annotate pods and scale (a pool to zero). A verb the install lacks shows up as a
    403 in the operator's log, or as a step that never happens."""
    spec = sample_spec()
    spec["workers"].append({"name": "reports", "queues": ["reports"], "replicas": 1})
    clusters.put_secret("flower-login", {"auth": "admin:s3cret"})
    spec["flower"] = {
        "enabled": True,
        "basicAuthSecretRef": {"name": "flower-login"},
        "port": _free_port(),
    }
    clusters.create("demo", spec)
    clusters.wait_phase("demo", "Available")
    status = clusters.get("demo")["status"]
    assert status["backlog"] >= 0  # the broker Secret was readable
    assert status["observedGeneration"] == 1  # status: patch
    flower = clusters.plain(
        clusters.core.read_namespaced_service("demo-flower", clusters.namespace)
    )
    assert flower["spec"]["ports"][0]["port"] == spec["flower"]["port"]  # Services: create
    # Autoscaling the idle pool to zero: a deletion cost on its pod, then a replica patch.
    spec["workers"][1]["autoscaling"] = {
        "minReplicas": 0,
        "maxReplicas": 1,
        "scaleDown": {"stabilizationWindowSeconds": 0},
    }
    clusters.patch_spec("demo", {"workers": spec["workers"]})
    costs: set[str] = set()

    def scaled_to_zero() -> bool:
        for pod in clusters.pods(f"{naming.POOL_LABEL}=reports"):
            annotations = pod["metadata"].get("annotations") or {}
            costs.update(v for k, v in annotations.items() if k.endswith("pod-deletion-cost"))
        return bool(clusters.deployments()["demo-worker-reports"]["spec"]["replicas"] == 0)

    wait_for(scaled_to_zero, timeout=60, message="the idle pool was not scaled to zero")
    assert costs == {"0"}, "the idle pod got no deletion cost before the scale-down"
    assert clusters.event_messages("ScaledDown", "demo"), "no Event for the scale-down"
    clusters.patch_spec("demo", {"workers": spec["workers"][:1], "flower": {"enabled": False}})
    wait_for(
        lambda: set(clusters.deployments()) == {"demo-worker-default"},
        timeout=120,
        message="the removed pool's and Flower's Deployments not deleted",
    )
    wait_for(
        lambda: not clusters.core.list_namespaced_service(clusters.namespace).items,
        timeout=30,
        message="Flower's Service not deleted",
    )
    assert clusters.event_messages("Deleted", "demo"), "the operator could not post Events"
