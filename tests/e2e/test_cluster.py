"""The test cluster itself: real controllers, a real kubelet and runtime, the worker image.

These run first (file order) so a broken cluster shows up here, not as an operator failure.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid

import pytest
import redis
from kubernetes import client

from tests.e2e import dnsquery
from tests.e2e.kube import describe_pod, pod_logs, wait_for
from tests.e2e.services import default_service_account, serve_redis

SLEEP_FOREVER = ["sleep", "infinity"]


def pod_spec(
    image: str,
    command: list[str],
    host_network: bool,
    restart_policy: str = "Never",
    readiness_probe: client.V1Probe | None = None,
    liveness_probe: client.V1Probe | None = None,
) -> client.V1PodSpec:
    container = client.V1Container(
        name="main",
        image=image,
        command=command,
        readiness_probe=readiness_probe,
        liveness_probe=liveness_probe,
    )
    return client.V1PodSpec(
        containers=[container],
        host_network=host_network,
        restart_policy=restart_policy,
        termination_grace_period_seconds=1,
    )


def run_pod(api: client.ApiClient, namespace: str, name: str, spec: client.V1PodSpec) -> None:
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name=name), spec=spec)
    client.CoreV1Api(api).create_namespaced_pod(namespace, pod)


def pod_phase(api: client.ApiClient, namespace: str, name: str) -> str:
    pod = client.CoreV1Api(api).read_namespaced_pod(name, namespace)
    return str(pod.status and pod.status.phase)


def wait_finished(api: client.ApiClient, namespace: str, name: str, timeout: float = 90) -> str:
    """The phase of a pod once it is Succeeded or Failed."""

    def finished() -> str | None:
        phase = pod_phase(api, namespace, name)
        return phase if phase in ("Succeeded", "Failed") else None

    try:
        return str(wait_for(finished, timeout=timeout))
    except AssertionError:
        pytest.fail(f"pod did not finish:\n{describe_pod(api, namespace, name)}")


def test_deployment_of_the_worker_image_becomes_ready_and_is_collected(
    api_client: client.ApiClient, namespace: str, worker_image: str, host_network: bool
) -> None:
    apps = client.AppsV1Api(api_client)
    labels = {"app": "sleeper"}
    template = client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=labels),
        spec=pod_spec(
            worker_image,
            SLEEP_FOREVER,
            host_network,
            restart_policy="Always",
            readiness_probe=client.V1Probe(
                _exec=client.V1ExecAction(command=["test", "-x", "/opt/venv/bin/celery"]),
                period_seconds=1,
            ),
        ),
    )
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="sleeper"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=template,
        ),
    )
    apps.create_namespaced_deployment(namespace, deployment)

    def ready_replicas() -> bool:
        status = apps.read_namespaced_deployment(name="sleeper", namespace=namespace).status
        return bool(status and status.ready_replicas == 2)

    wait_for(ready_replicas, timeout=90, message="Deployment sleeper: 2 ready replicas")

    apps.delete_namespaced_deployment("sleeper", namespace, propagation_policy="Background")
    core = client.CoreV1Api(api_client)
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=sleeper").items,
        timeout=60,
        message="the garbage collector removed the Deployment's ReplicaSet and pods",
    )
    assert not apps.list_namespaced_replica_set(namespace).items


def test_a_pod_of_the_worker_image_runs_celery_to_completion(
    api_client: client.ApiClient, namespace: str, worker_image: str, host_network: bool
) -> None:
    run_pod(
        api_client, namespace, "celery-version",
        pod_spec(worker_image, ["celery", "--version"], host_network),
    )  # fmt: skip

    assert wait_finished(api_client, namespace, "celery-version") == "Succeeded"
    pod = client.CoreV1Api(api_client).read_namespaced_pod("celery-version", namespace)
    assert pod.status
    assert pod.status.container_statuses
    state = pod.status.container_statuses[0].state
    assert state
    assert state.terminated
    assert state.terminated.exit_code == 0
    log = pod_logs(api_client, namespace, "celery-version")
    assert re.match(r"\d+\.\d+\.\d+ \(\w+\)", log), log


def test_a_failing_liveness_probe_makes_the_kubelet_restart_the_container(
    api_client: client.ApiClient, namespace: str, worker_image: str, host_network: bool
) -> None:
    probe = client.V1Probe(
        _exec=client.V1ExecAction(command=["false"]), period_seconds=1, failure_threshold=1
    )
    run_pod(
        api_client, namespace, "doomed",
        pod_spec(worker_image, SLEEP_FOREVER, host_network, "Always", liveness_probe=probe),
    )  # fmt: skip

    def restarts() -> int:
        pod = client.CoreV1Api(api_client).read_namespaced_pod("doomed", namespace)
        statuses = (pod.status and pod.status.container_statuses) or []
        return sum(s.restart_count for s in statuses)

    wait_for(restarts, timeout=90, message="restartCount of a container failing its liveness probe")


def test_redis_fixture_serves_the_test_process_and_pods(
    api_client: client.ApiClient,
    namespace: str,
    worker_image: str,
    host_network: bool,
    redis_url: str,
    redis_pod_url: str,
) -> None:
    key = f"e2e-{uuid.uuid4().hex[:8]}"
    redis.Redis.from_url(redis_url).set(key, "from-the-test")
    command = ["sh", "-c", f'test "$(redis-cli -u {redis_pod_url} GET {key})" = from-the-test']
    run_pod(api_client, namespace, "redis-client", pod_spec(worker_image, command, host_network))

    assert wait_finished(api_client, namespace, "redis-client") == "Succeeded", describe_pod(
        api_client, namespace, "redis-client"
    )


POD_GATEWAY = "198.18.1.1"  # cluster/lib.sh: the host's address on the pod bridge

_REACH = """
import errno, socket, sys
def reach(host, port, send=b""):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); s.sendall(send); return s.recv(64).decode().strip() or "open"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
peer = sys.argv[1]
print("peer", reach(peer, 6379, b"PING\\r\\n"))
print("host", reach("{gateway}", int(sys.argv[2])))
print("outside", reach("8.8.8.8", 53))
"""


def test_a_pod_on_the_pod_network_reaches_pods_and_the_host_and_nothing_else(
    api_client: client.ApiClient, namespace: str, worker_image: str, host_network: bool
) -> None:
    """The local cluster's bridge: pods get addresses of their own in 198.18.1.0/24, reach each
    other and the host's gateway address, and a connection anywhere else is refused at once."""
    if not host_network:
        pytest.skip("the local cluster's networking only: this cluster has a real CNI")
    core = client.CoreV1Api(api_client)
    server = ["redis-server", "--port", "6379", "--save", "", "--protected-mode", "no"]
    run_pod(api_client, namespace, "peer", pod_spec(worker_image, server, False))
    wait_for(
        lambda: pod_phase(api_client, namespace, "peer") == "Running",
        timeout=60,
        message="peer pod not running",
    )

    def peer_address() -> str:
        status = core.read_namespaced_pod("peer", namespace).status
        return (status.pod_ip if status else None) or ""

    peer_ip = wait_for(peer_address, timeout=30, message="peer pod has no address")
    assert re.fullmatch(r"198\.18\.1\.\d+", peer_ip), peer_ip
    assert wait_for(lambda: _pings(peer_ip), timeout=30, message="the host cannot reach the pod")

    with socket.create_server((POD_GATEWAY, 0)) as listener:  # something of the host's to reach
        listener.settimeout(60)
        port = listener.getsockname()[1]
        script = _REACH.replace("{gateway}", POD_GATEWAY)
        command = ["python3", "-c", script, peer_ip, str(port)]
        run_pod(api_client, namespace, "probe", pod_spec(worker_image, command, False))
        accepted, _ = listener.accept()
        accepted.sendall(b"hello\n")
        accepted.close()
        assert wait_finished(api_client, namespace, "probe") == "Succeeded"
    lines = dict(
        line.split(" ", 1) for line in pod_logs(api_client, namespace, "probe").splitlines()
    )
    assert lines == {"peer": "+PONG", "host": "hello", "outside": "ENETUNREACH"}, lines


def _pings(address: str) -> bool:
    try:
        return bool(redis.Redis(host=address, port=6379, socket_timeout=2).ping())
    except redis.RedisError:
        return False


# Services and cluster DNS: kube-proxy (iptables mode) and CoreDNS on the local cluster, and
# whatever a kind cluster runs. The pods here are on the pod network.

DNS_SERVICE_IP = "198.18.0.10"  # cluster/lib.sh: dns_service_ip, the local cluster's kube-dns
CLUSTER_DOMAIN = "cluster.local"

_PING_BY_NAME = """
import json, socket, sys, time
def ping(host, deadline):
    while True:  # kube-proxy programs a new Service within a second or two
        try:
            address = socket.gethostbyname(host)
            with socket.create_connection((host, 6379), timeout=3) as s:
                s.sendall(b"PING\\r\\n")
                return [address, s.recv(64).decode().strip()]
        except OSError as error:
            if time.monotonic() > deadline:
                return [None, repr(error)]
            time.sleep(0.5)
deadline = time.monotonic() + 30
print(json.dumps({host: ping(host, deadline) for host in sys.argv[1:]}))
"""

_WHO_AM_I = """
import json, os, ssl, urllib.request
account = "/var/run/secrets/kubernetes.io/serviceaccount"
context = ssl.create_default_context(cafile=account + "/ca.crt")
token = open(account + "/token").read()
review = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
def who(server):
    request = urllib.request.Request(
        f"https://{server}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        data=review.encode(), method="POST",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        return json.load(response)["status"]["userInfo"]["username"]
in_cluster = os.environ["KUBERNETES_SERVICE_HOST"] + ":" + os.environ["KUBERNETES_SERVICE_PORT"]
print(json.dumps({"in-cluster config": who(in_cluster), "by name": who("kubernetes.default.svc")}))
"""

_RESOLVE_OUTSIDE = """
import json, socket, time
started = time.monotonic()
try:
    socket.getaddrinfo("example.com", 80)
    outcome = "resolved"
except socket.gaierror as error:
    outcome = error.strerror
seconds = time.monotonic() - started
words = open("/etc/resolv.conf").read().split()
servers = [words[i + 1] for i, word in enumerate(words) if word == "nameserver"]
print(json.dumps({"outcome": outcome, "seconds": seconds, "nameservers": servers}))
"""


def run_script(api: client.ApiClient, namespace: str, name: str, image: str, *args: str) -> object:
    """Run ``python3 -c`` with ``args`` in a pod on the pod network; the JSON it printed."""
    default_service_account(api, namespace)
    run_pod(api, namespace, name, pod_spec(image, ["python3", "-c", *args], host_network=False))
    phase = wait_finished(api, namespace, name)
    log = pod_logs(api, namespace, name)
    assert phase == "Succeeded", f"{name}: {phase}\n{log}\n{describe_pod(api, namespace, name)}"
    return json.loads(log.strip().splitlines()[-1])


def test_a_pod_reaches_another_through_a_service_by_its_dns_names(
    api_client: client.ApiClient, namespace: str, worker_image: str
) -> None:
    """Cluster DNS names a ClusterIP Service (short, namespaced and full names, through the pod's
    search list), and the Service carries the connection to the pod behind it."""
    cluster_ip = serve_redis(api_client, namespace, worker_image)
    names = ["redis", f"redis.{namespace}", f"redis.{namespace}.svc",
             f"redis.{namespace}.svc.{CLUSTER_DOMAIN}"]  # fmt: skip

    answers = run_script(api_client, namespace, "client", worker_image, _PING_BY_NAME, *names)

    assert answers == {name: [cluster_ip, "+PONG"] for name in names}, answers


def test_a_pod_reaches_the_api_server_through_the_kubernetes_service_with_its_token(
    api_client: client.ApiClient, namespace: str, worker_image: str
) -> None:
    """What an in-cluster client (an operator pod) does: the injected KUBERNETES_SERVICE_HOST
    and _PORT, the mounted CA and ServiceAccount token; the API server's certificate also covers
    the Service's DNS name. The API server says who the token belongs to."""
    answers = run_script(api_client, namespace, "whoami", worker_image, _WHO_AM_I)

    account = f"system:serviceaccount:{namespace}:default"
    assert answers == {"in-cluster config": account, "by name": account}, answers


def _local_cluster_only(host_network: bool) -> None:
    if not host_network:
        pytest.skip("the local cluster's Services and DNS (the test process is on its node)")


def test_the_host_reaches_service_ips_and_an_unused_one_fails_at_once(
    api_client: client.ApiClient, namespace: str, worker_image: str, host_network: bool
) -> None:
    """kube-proxy translates the host's own connections too (the operator and the tests run on
    the node), over TCP and UDP; a ClusterIP port or address that no Service has is refused at
    once (up.sh's reject rule), never routed anywhere."""
    _local_cluster_only(host_network)
    cluster_ip = serve_redis(api_client, namespace, worker_image)

    assert wait_for(lambda: _pings(cluster_ip), timeout=30, message="Redis through its Service")
    answer = dnsquery.query(DNS_SERVICE_IP, f"redis.{namespace}.svc.{CLUSTER_DOMAIN}")
    assert answer == (dnsquery.NOERROR, [cluster_ip]), answer

    services = client.CoreV1Api(api_client).list_service_for_all_namespaces().items
    used = {s.spec.cluster_ip for s in services if s.spec}
    unused = next(f"198.18.0.{n}" for n in range(254, 1, -1) if f"198.18.0.{n}" not in used)
    for address, port in ((cluster_ip, 6380), (unused, 6379)):
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5).close()
        assert time.monotonic() - started < 1, (address, port)


def test_cluster_dns_answers_for_the_cluster_domain_only(
    api_client: client.ApiClient, namespace: str, worker_image: str, host_network: bool
) -> None:
    """The local cluster's CoreDNS serves the cluster domain and nothing else: it has no upstream
    to forward to (cluster/dns), so any other name is REFUSED at once and no query leaves the
    machine; a pod's resolver (the kubelet's clusterDNS) fails such a name without waiting."""
    _local_cluster_only(host_network)

    assert dnsquery.query(DNS_SERVICE_IP, f"kubernetes.default.svc.{CLUSTER_DOMAIN}") == (
        dnsquery.NOERROR, ["198.18.0.1"],
    )  # fmt: skip
    assert dnsquery.query(DNS_SERVICE_IP, f"nothing.default.svc.{CLUSTER_DOMAIN}").rcode == (
        dnsquery.NXDOMAIN
    )
    for outside in ("example.com", "localhost", "kubernetes.default.svc.cluster.example"):
        assert dnsquery.query(DNS_SERVICE_IP, outside) == (dnsquery.REFUSED, []), outside

    seen = run_script(api_client, namespace, "outside", worker_image, _RESOLVE_OUTSIDE)
    assert isinstance(seen, dict)
    assert seen["nameservers"] == [DNS_SERVICE_IP], seen
    assert seen["outcome"] != "resolved", seen
    assert seen["seconds"] < 2, seen
