"""Fixtures of the end-to-end tests: a real Kubernetes cluster and a namespace per test.

Session fixtures
    ``kubeconfig`` -> str
        The path of a kubeconfig. ``$KUBECONFIG`` when set (any cluster, kind included); else the
        suite runs ``cluster/up.sh``, which starts (or reuses) the local single-node cluster, and
        takes the path from its last line. Also sets ``os.environ["KUBECONFIG"]`` for Kopf and the
        Kubernetes client. A cluster that cannot start fails the test with the components' log
        tails; e2e tests are never skipped for want of a cluster.
    ``suite_owns_cluster`` -> bool
        True when this run started the local cluster itself (no ``$KUBECONFIG``, none was running):
        only then does ``test_zz_cluster_down.py`` tear it down, and only if no other test session
        registered as its user still runs.
    ``api_client`` -> kubernetes.client.ApiClient
        A client loaded from ``kubeconfig``.
    ``worker_image`` -> str
        ``$CELERY_OPERATOR_WORKER_IMAGE`` or ``localhost/celery-operator/worker:dev`` (built and
        imported by ``cluster/image.sh``; with kind: ``kind load docker-image``).
    ``host_network`` -> bool
        True on the local cluster (node label ``celeryoperator.dev/local-cluster=true``), where
        most tests run their pods with ``hostNetwork: true`` and reach Redis on 127.0.0.1 (its
        pod network, Services and cluster DNS work too: ``test_cluster.py``), and where this
        process, on the node, reaches pod and Service IPs.

Function fixtures
    ``namespace`` -> str
        A fresh namespace ``e2e-<test name>-<random>``, deleted afterwards; teardown waits until
        it is gone (at most 180 s) so each test leaves nothing behind.
    ``redis_url`` -> str
        A real Redis (``redis-server`` of the worker image) as a Pod in ``namespace``, Ready, as
        a URL for the test process. On the local cluster it runs with hostNetwork on a free port P
        bound to 127.0.0.1: ``redis://127.0.0.1:P/0``, the same URL for pods and for the tests.
    ``redis_pod_url`` -> str
        The URL pods use: equal to ``redis_url`` on the local cluster; on a cluster without host
        networking, the Service's DNS name (and ``redis_url`` is a ``kubectl port-forward``).

Helpers (``wait_for``, ``pod_logs``, ``describe_pod``, ``pod_ready``) are in ``tests/e2e/kube.py``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kubernetes import client, config
from kubernetes.config import kube_config

# The operator and CeleryCluster fixtures, for every e2e module.
from tests.e2e.harness import clusters, crd, liveness_port, operator, sample_spec  # noqa: F401
from tests.e2e.kube import describe_pod, kubectl_command, pod_ready, process_start_time, wait_for

ROOT = Path(__file__).resolve().parents[2]
UP = ROOT / "cluster" / "up.sh"
LOCAL_CLUSTER_LABEL = "celeryoperator.dev/local-cluster=true"
DEFAULT_WORKER_IMAGE = "localhost/celery-operator/worker:dev"
UP_TIMEOUT_S = 900  # a cold machine builds Kubernetes (about 6.5 min) and the worker image first
NAMESPACE_GONE_TIMEOUT_S = 180
REDIS_READY_TIMEOUT_S = 90
REUSED_MARKER = "reusing the running cluster"  # what cluster/up.sh says when it starts nothing


@pytest.fixture(scope="session")
def _cluster() -> tuple[str, bool]:
    """(kubeconfig path, whether this run started the cluster)."""
    given = os.environ.get("KUBECONFIG")
    if given:
        _register_session(given)
        return given, False
    path, started = _start_local_cluster()
    _make_default_kubeconfig(path)
    _register_session(path)
    return path, started


def _register_session(kubeconfig: str) -> None:
    """On the local cluster, record this test process as a user (PID and start time), so that
    another session's final teardown leaves the cluster running while this one needs it."""
    state_dir = Path(kubeconfig).parent
    if not (state_dir / "run").is_dir():
        return
    sessions = state_dir / "sessions"
    sessions.mkdir(exist_ok=True)
    (sessions / str(os.getpid())).write_text(process_start_time(os.getpid()) or "")


def _make_default_kubeconfig(path: str) -> None:
    """Point every later client at ``path``: ``$KUBECONFIG`` for new processes and Kopf, and the
    kubernetes package's default location, which it read from ``$KUBECONFIG`` once, on import."""
    os.environ["KUBECONFIG"] = path
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path


def _start_local_cluster() -> tuple[str, bool]:
    try:
        done = subprocess.run(
            [str(UP)], capture_output=True, text=True, timeout=UP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"cluster/up.sh did not finish in {UP_TIMEOUT_S}s:\n{error.stderr!r}")
    last = done.stdout.strip().splitlines()[-1:] or [""]
    if done.returncode != 0 or not last[0].startswith("KUBECONFIG="):
        pytest.fail(
            f"cluster/up.sh failed (exit {done.returncode}); its report, with the components'"
            f" log tails:\n{done.stderr[-6000:]}\nstdout:\n{done.stdout[-2000:]}"
        )
    return last[0].removeprefix("KUBECONFIG="), REUSED_MARKER not in done.stderr


@pytest.fixture(scope="session")
def kubeconfig(_cluster: tuple[str, bool]) -> str:
    return _cluster[0]


@pytest.fixture(scope="session")
def suite_owns_cluster(_cluster: tuple[str, bool]) -> bool:
    return _cluster[1]


@pytest.fixture(scope="session")
def api_client(kubeconfig: str) -> Iterator[client.ApiClient]:
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig
    )
    yield api
    api.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def worker_image() -> str:
    return os.environ.get("CELERY_OPERATOR_WORKER_IMAGE", DEFAULT_WORKER_IMAGE)


@pytest.fixture(scope="session")
def host_network(api_client: client.ApiClient) -> bool:
    nodes = client.CoreV1Api(api_client).list_node(label_selector=LOCAL_CLUSTER_LABEL)
    return bool(nodes.items)


def _namespace_name(test_name: str) -> str:
    short = re.sub(r"[^a-z0-9]+", "-", test_name.lower().removeprefix("test_")).strip("-")
    return f"e2e-{short[:40].rstrip('-')}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, api_client: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    name = _namespace_name(request.node.name)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    _delete_namespace(core, name)


def _delete_namespace(core: client.CoreV1Api, name: str) -> None:
    """Delete the namespace, then its pods without grace (nothing can recreate them in a
    terminating namespace), and wait until the namespace is gone."""
    try:
        core.delete_namespace(name)
        core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
    except client.ApiException as error:
        if error.status != 404:
            raise

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except client.ApiException as error:
            return bool(error.status == 404)
        return False

    def leftovers() -> str:
        pods = core.list_namespaced_pod(name).items
        return (
            ", ".join(
                f"{p.metadata and p.metadata.name} ({p.status and p.status.phase})" for p in pods
            )
            or "no pods"
        )

    try:
        wait_for(gone, timeout=NAMESPACE_GONE_TIMEOUT_S, interval=1)
    except AssertionError:
        pytest.fail(f"namespace {name} still there after teardown; left: {leftovers()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_pod(name: str, image: str, port: int, host_network: bool) -> client.V1Pod:
    """A Redis server without persistence, Ready once it accepts TCP connections."""
    bind = ["--bind", "127.0.0.1"] if host_network else []
    container = client.V1Container(
        name="redis",
        image=image,
        image_pull_policy="IfNotPresent",
        command=["redis-server"],
        args=["--port", str(port), "--save", "", "--appendonly", "no", *bind],
        readiness_probe=client.V1Probe(
            tcp_socket=client.V1TCPSocketAction(
                port=port, host="127.0.0.1" if host_network else None
            ),
            period_seconds=1,
        ),
    )
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1PodSpec(
            containers=[container],
            host_network=host_network,
            termination_grace_period_seconds=1,
        ),
    )


def recreate_redis(
    core: client.CoreV1Api, namespace: str, redis_url: str, image: str, host_network: bool
) -> None:
    """After the test deleted the Redis pod ``redis``: wait until it is gone, then start a new,
    empty one on the same port (what a broker outage that ends looks like)."""
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, field_selector="metadata.name=redis").items,
        timeout=30,
        message="the old Redis pod never went away",
    )
    port = urlsplit(redis_url).port or 6379
    core.create_namespaced_pod(namespace, redis_pod("redis", image, port, host_network))


@pytest.fixture
def _redis(
    api_client: client.ApiClient, namespace: str, worker_image: str, host_network: bool
) -> Iterator[tuple[str, str]]:
    """(URL for the test process, URL for pods)."""
    core = client.CoreV1Api(api_client)
    port = free_port() if host_network else 6379
    core.create_namespaced_pod(namespace, redis_pod("redis", worker_image, port, host_network))
    try:
        wait_for(lambda: pod_ready(api_client, namespace, "redis"), timeout=REDIS_READY_TIMEOUT_S)
    except AssertionError:
        pytest.fail(f"Redis never became Ready:\n{describe_pod(api_client, namespace, 'redis')}")
    if host_network:
        url = f"redis://127.0.0.1:{port}/0"
        yield url, url
        return
    with _PortForward(core, namespace, port) as local_port:
        yield f"redis://127.0.0.1:{local_port}/0", f"redis://redis.{namespace}.svc:{port}/0"


class _PortForward:
    """A Service in front of the Redis pod and ``kubectl port-forward`` to it (best effort, for
    clusters whose pods the test process cannot reach directly)."""

    def __init__(self, core: client.CoreV1Api, namespace: str, port: int) -> None:
        self.core, self.namespace, self.port = core, namespace, port
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> int:
        service = client.V1Service(
            metadata=client.V1ObjectMeta(name="redis"),
            spec=client.V1ServiceSpec(
                selector={"app": "redis"}, ports=[client.V1ServicePort(port=self.port)]
            ),
        )
        self.core.create_namespaced_service(self.namespace, service)
        local = free_port()
        self.process = subprocess.Popen(
            [*_kubectl(), "port-forward", "-n", self.namespace, "pod/redis",
             f"{local}:{self.port}", "--address", "127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        wait_for(lambda: _accepts(local), timeout=30, message="kubectl port-forward to Redis")
        return local

    def __exit__(self, *exc: object) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=10)


_kubectl = kubectl_command


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def redis_url(_redis: tuple[str, str]) -> str:
    return _redis[0]


@pytest.fixture
def redis_pod_url(_redis: tuple[str, str]) -> str:
    return _redis[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder is an e2e test."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)
