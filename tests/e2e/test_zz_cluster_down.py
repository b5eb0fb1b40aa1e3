"""`make cluster-down` leaves nothing behind. Runs after every other e2e test (file order).

Only a cluster this run started is torn down: a cluster given by ``$KUBECONFIG``, one already
running when the suite began (a developer's `make cluster`), or one that another test session
still uses (sessions register in ``<state>/sessions``) is left alone.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from kubernetes import client

from tests.e2e.kube import pod_ready, process_start_time, wait_for

ROOT = Path(__file__).resolve().parents[2]
CGROUP_PARENT = "celery-operator"  # cluster/lib.sh: the kubelet's cgroup root
POD_BRIDGE = Path("/sys/class/net/celeryop0")  # cluster/lib.sh: pod_bridge
SERVICE_CIDR = "198.18.0.0/24"  # cluster/lib.sh: service_cidr
# What marks the cluster's iptables: kube-proxy's and the kubelet's chains, up.sh's reject rule.
IPTABLES_MARKS = ("KUBE-", "celery-operator-cluster")


def recorded_processes(state_dir: Path) -> dict[int, str | None]:
    """Every process the cluster recorded: its components (PID files), containers (containerd's
    init.pid files), and everything in its cgroups (containers and containerd's shims)."""
    processes: dict[int, str | None] = {}
    for file in (state_dir / "run").glob("*.pid"):
        recorded, started = file.read_text().split()
        processes[int(recorded)] = started
    tasks = state_dir / "containerd" / "state" / "io.containerd.runtime.v2.task"
    members = [int(f.read_text()) for f in tasks.glob("*/*/init.pid")]
    for procs in Path("/sys/fs/cgroup/pids", CGROUP_PARENT).glob("**/cgroup.procs"):
        members.extend(int(line) for line in procs.read_text().split())
    processes.update({pid: process_start_time(pid) for pid in members})
    return processes


def other_sessions(state_dir: Path) -> list[int]:
    """Test sessions, other than this one, that registered as users of the cluster and still run."""
    users = []
    for file in (state_dir / "sessions").glob("*"):
        pid = int(file.name)
        if pid != os.getpid() and process_start_time(pid) == file.read_text():
            users.append(pid)
    return users


def iptables_of_the_cluster() -> list[str]:
    """The lines of ``iptables-save`` and ``ip6tables-save`` that belong to the cluster."""
    lines = []
    for command in ("iptables-save", "ip6tables-save"):
        saved = subprocess.run([command], capture_output=True, text=True, check=True).stdout
        lines += [line for line in saved.splitlines() if any(m in line for m in IPTABLES_MARKS)]
    return lines


def service_routes() -> str:
    return subprocess.run(
        ["ip", "route", "show", SERVICE_CIDR], capture_output=True, text=True, check=True
    ).stdout.strip()


def mounts_under(path: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def run_a_pod_with_a_volume(api: client.ApiClient, image: str) -> None:
    """A running pod (with its service-account token volume, a tmpfs) so that down has shims,
    containers and mounts to clean up."""
    core = client.CoreV1Api(api)
    namespace = f"e2e-cluster-down-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    container = client.V1Container(name="main", image=image, command=["sleep", "infinity"])
    for name, host_network in (("sleeper", True), ("bridged", False)):  # and one on the bridge
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(containers=[container], host_network=host_network),
        )

        def created(pod: client.V1Pod = pod) -> bool:  # the default service account comes late
            core.create_namespaced_pod(namespace, pod)
            return True

        def ready(name: str = name) -> bool:
            return pod_ready(api, namespace, name)

        wait_for(created, timeout=30, message="pod created")
        wait_for(ready, timeout=60, message=f"{name} ready")


def test_cluster_down_stops_every_process_and_unmounts_everything(
    suite_owns_cluster: bool, kubeconfig: str, api_client: client.ApiClient, worker_image: str
) -> None:
    if not suite_owns_cluster:
        pytest.skip("this run did not start the cluster ($KUBECONFIG given or already running)")
    state_dir = Path(kubeconfig).parent
    if others := other_sessions(state_dir):
        pytest.skip(f"other test sessions (PIDs {others}) still use the cluster: left running")
    run_a_pod_with_a_volume(api_client, worker_image)
    processes = recorded_processes(state_dir)
    assert len(processes) > 8, processes  # eight components, plus shims and containers
    assert {f.stem for f in (state_dir / "run").glob("*.pid")} >= {"kube-proxy", "coredns"}
    assert mounts_under(state_dir)
    assert list(POD_BRIDGE.glob("brif/*")), "the bridged pod has no port on the pod bridge"
    assert any("KUBE-SERVICES" in line for line in iptables_of_the_cluster()), "no kube-proxy"
    assert service_routes(), "no route for the service range"

    subprocess.run(
        [str(ROOT / "cluster" / "down.sh")],
        check=True,
        timeout=120,
        env={**os.environ, "CELERY_OPERATOR_CLUSTER_DIR": str(state_dir)},
    )

    alive = {
        pid for pid, started in processes.items() if started and process_start_time(pid) == started
    }
    assert not alive, f"still running after down: {alive}"
    assert not mounts_under(state_dir)
    assert not state_dir.exists()
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{CGROUP_PARENT}"))
    assert not POD_BRIDGE.exists(), "the pod bridge is still there"
    assert not iptables_of_the_cluster(), "iptables rules or chains left"
    assert not service_routes(), "the service range's route is still there"
