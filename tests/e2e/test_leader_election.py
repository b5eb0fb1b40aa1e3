"""Two operator processes with ``--leader-elect`` on the real API server: one leads, the other
stands by writing nothing, and the Lease moves when the leader is killed or stopped.

Each process is ``python -m celery_operator`` on this machine (``opproc.OperatorProcess``),
watching the test's namespace and holding the Lease there, logged in with nothing but a token of
the namespaced install's ServiceAccount (its Roles, the Lease's included), as the other e2e tests
run the operator. A thread samples the Lease and every process's ``/healthz`` (Kopf's once it
leads, the standby's own before) every quarter second for the whole test: never may two
processes run Kopf at once, and the Lease may only ever pass on, never come back.

A second test takes the leader's right to renew away (deletes its Lease RoleBinding): it must
exit within the renew deadline of its last renewal, before the Lease could expire for anyone.

The figures (kill and graceful takeover, the exit) are printed; the budget they must meet is
README's: a SIGKILLed leader is replaced within 15 s (lease duration 10 s + retry period 2 s, and
Kopf's start), a SIGTERMed one within about 3 s (its release, then the standby's next retry).
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.e2e import rbac
from tests.e2e.harness import NAMESPACED_INSTALL, OPERATOR_ACCOUNT, Clusters
from tests.e2e.kube import wait_for
from tests.e2e.opproc import OperatorProcess, say

LEASE = "celery-operator"  # the default --lease-name, the one the Role grants
LEADER_ELECTION = "celery-operator-leader-election"  # deploy/operator/leader-election.yaml
KILL_TAKEOVER_S = 15.0
GRACEFUL_TAKEOVER_S = 3.0
SAMPLE_INTERVAL_S = 0.25
REQUEST_LINE = re.compile(r'"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/1.1" (\d+)')
"""A request the kubernetes client made and its status, as urllib3 logs it at debug level
(``-v``)."""


@dataclass(frozen=True)
class Sample:
    at: float
    holder: str
    transitions: int
    running_kopf: frozenset[str]
    """The processes whose /healthz was Kopf's (not a standby's) at that moment."""


class Census(threading.Thread):
    """Samples the Lease and each process's role until stopped."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        super().__init__(name="lease census", daemon=True)
        self.leases = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.processes: dict[str, OperatorProcess] = {}
        self.samples: list[Sample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_INTERVAL_S):
            try:
                spec = self.leases.read_namespaced_lease(LEASE, self.namespace).spec
            except client.ApiException as error:
                if error.status != 404:
                    raise
                spec = None
            running = frozenset(n for n, p in dict(self.processes).items() if runs_kopf(p))
            self.samples.append(
                Sample(
                    time.monotonic(),
                    (spec and spec.holder_identity) or "",
                    (spec and spec.lease_transitions) or 0,
                    running,
                )
            )

    def holder(self) -> str:
        return self.samples[-1].holder if self.samples else ""

    def __enter__(self) -> Census:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.join()


def runs_kopf(process: OperatorProcess) -> bool:
    """Its /healthz answers as Kopf does (a standby's says ``standby``)."""
    url = f"http://127.0.0.1:{process.liveness_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return "standby" not in json.loads(response.read())
    except (OSError, ValueError):
        return False


def requests_made(process: OperatorProcess) -> list[tuple[str, str, str]]:
    return REQUEST_LINE.findall(process.log_text())


def kopf_lines(process: OperatorProcess) -> list[str]:
    """Lines logged by Kopf (its logger names start with ``kopf``)."""
    return [line for line in process.log_text().splitlines() if re.match(r"\[[^]]+\] kopf", line)]


@pytest.fixture
def operator_kubeconfig(
    crd: None, api_client: client.ApiClient, kubeconfig: str, namespace: str, tmp_path: Path
) -> Path:
    """A token of deploy/namespaced's ServiceAccount, its Roles applied in the namespace."""
    rendered = rbac.kustomize_in_namespace(NAMESPACED_INSTALL, namespace, tmp_path / "install")
    rbac.kubectl_apply(kubeconfig, rbac.pick(rendered, "ServiceAccount", "Role", "RoleBinding"))
    return rbac.service_account_kubeconfig(
        api_client, kubeconfig, namespace, OPERATOR_ACCOUNT, tmp_path / "operator.kubeconfig"
    )


class Candidates:
    """Operator processes by name (their ``POD_NAME``), not started; all stopped afterwards,
    their logs free of tracebacks and of 403s (but those ``refusals_expected`` matches)."""

    def __init__(self, kubeconfig: Path, namespace: str, logs: Path) -> None:
        self.kubeconfig, self.namespace, self.logs = kubeconfig, namespace, logs
        self.made: list[OperatorProcess] = []
        self.refusals_expected: re.Pattern[str] | None = None

    def __call__(self, name: str) -> OperatorProcess:
        process = OperatorProcess(
            self.namespace,
            str(self.kubeconfig),
            self.logs / f"{name}.log",
            env={
                "PYTHONUNBUFFERED": "1",  # the log is read while the process runs
                "POD_NAME": name,
                "POD_NAMESPACE": self.namespace,  # the Lease's, as the downward API sets it
                "CELERY_OPERATOR_RECONCILE_INTERVAL_SECONDS": "3",
                "CELERY_OPERATOR_HEALTH_INTERVAL_SECONDS": "3",
            },
            args=["--leader-elect", "-v"],
        )
        self.made.append(process)
        return process

    def stop_and_check(self) -> None:
        for process in self.made:
            process.stop()
        for process in self.made:
            assert not process.tracebacks(), process.log_tail()
            refused = rbac.refusals(process.log_text(), self.refusals_expected)
            assert not refused, "the Roles lack what the operator used:\n" + "\n".join(refused)


@pytest.fixture
def candidates(operator_kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[Candidates]:
    made = Candidates(operator_kubeconfig, namespace, tmp_path)
    yield made
    made.stop_and_check()


def observed_generation(clusters: Clusters) -> int:
    return int(clusters.get("demo").get("status", {}).get("observedGeneration", 0))


def reconciled(clusters: Clusters, generation: int, since: float, timeout: float) -> float:
    """Seconds from ``since`` until status.observedGeneration reached ``generation``."""
    wait_for(
        lambda: observed_generation(clusters) >= generation,
        timeout=timeout,
        interval=0.1,
        message=f"generation {generation} not reconciled",
    )
    return time.monotonic() - since


def held_by(census: Census, name: str, since: float, timeout: float) -> float:
    wait_for(
        lambda: census.holder().startswith(f"{name}_"),
        timeout=timeout,
        interval=0.05,
        message=f"{name} never held the Lease (holder: {census.holder()!r})",
    )
    return time.monotonic() - since


def running_kopf(process: OperatorProcess, since: float) -> float:
    wait_for(lambda: runs_kopf(process), timeout=15, interval=0.05, message="Kopf not running")
    return time.monotonic() - since


def test_one_leader_at_a_time_and_the_standby_takes_over(
    api_client: client.ApiClient,
    namespace: str,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    candidates: Candidates,
) -> None:
    with Census(api_client, namespace) as census:
        # Two candidates start at once: exactly one leads.
        pair = {name: candidates(name) for name in ("op-a", "op-b")}
        census.processes.update(pair)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(OperatorProcess.start, pair.values()))
        wait_for(census.holder, timeout=15, message="nobody took the Lease")
        leader_name = census.holder().rsplit("_", 1)[0]
        (standby_name,) = set(pair) - {leader_name}
        leader, standby = pair[leader_name], pair[standby_name]
        wait_for(lambda: runs_kopf(leader), timeout=15, message="the leader never ran Kopf")

        spec = sample_spec()
        clusters.create("demo", spec)
        reconciled(clusters, 1, time.monotonic(), timeout=30)
        assert clusters.deployments(), "the leader created no Deployment"

        # The standby: no Kopf at all, and nothing but reads of the Lease.
        wait_for(
            lambda: f"is held by {census.holder()}" in standby.log_text(),
            timeout=10,
            message="the standby never saw the leader",
        )
        assert not runs_kopf(standby)
        assert not kopf_lines(standby), kopf_lines(standby)[:5]
        lease = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        made = requests_made(standby)
        assert ("GET", f"{lease}/{LEASE}", "200") in made, "the standby never read the Lease"
        # Reads of the Lease; at the start, maybe none yet (404) and a create that lost the race.
        allowed = {
            ("GET", f"{lease}/{LEASE}", "200"),
            ("GET", f"{lease}/{LEASE}", "404"),
            ("POST", lease, "409"),
        }
        assert set(made) <= allowed, set(made) - allowed

        # SIGKILL: the Lease expires, the standby takes it and reconciles a new generation.
        assert leader.process is not None
        killed = time.monotonic()
        leader.process.send_signal(signal.SIGKILL)
        leader.process.wait(timeout=10)
        spec["workers"][0]["concurrency"] = 3
        clusters.patch_spec("demo", spec)
        kill_lease = held_by(census, standby_name, killed, timeout=KILL_TAKEOVER_S + 5)
        kill_kopf = running_kopf(standby, killed)
        kill_reconcile = reconciled(clusters, 2, killed, timeout=KILL_TAKEOVER_S + 10)
        say(
            f"leader SIGKILLed: the standby held the Lease after {kill_lease:.1f}s, ran Kopf"
            f" after {kill_kopf:.1f}s, had reconciled the change made meanwhile after"
            f" {kill_reconcile:.1f}s"
        )

        # SIGTERM: Kopf stops, the Lease is released, a fresh standby takes it at its next try.
        third = candidates("op-c")
        census.processes["op-c"] = third
        third.start()
        wait_for(
            lambda: "is held by" in third.log_text(), timeout=15, message="op-c never stood by"
        )
        stopping = time.monotonic()
        assert standby.process is not None
        standby.process.send_signal(signal.SIGTERM)
        term_lease = held_by(census, "op-c", stopping, timeout=GRACEFUL_TAKEOVER_S + 10)
        term_kopf = running_kopf(third, stopping)
        spec["workers"][0]["concurrency"] = 4
        clusters.patch_spec("demo", spec)
        term_reconcile = reconciled(clusters, 3, stopping, timeout=20)
        assert standby.process.wait(timeout=30) == 0, standby.log_tail()
        assert "released the Lease" in standby.log_text()
        say(
            f"leader SIGTERMed: the next standby held the Lease after {term_lease:.1f}s, ran"
            f" Kopf after {term_kopf:.1f}s, had reconciled a change made then after"
            f" {term_reconcile:.1f}s"
        )

    assert kill_reconcile <= KILL_TAKEOVER_S, f"SIGKILL takeover took {kill_reconcile:.1f}s"
    assert term_lease <= GRACEFUL_TAKEOVER_S, f"graceful takeover took {term_lease:.1f}s"
    samples = census.samples
    together = [s for s in samples if len(s.running_kopf) > 1]
    assert not together, f"two processes ran Kopf at once: {together[:3]}"
    holders = [s.holder.rsplit("_", 1)[0] for s in samples if s.holder]
    passes = [h for i, h in enumerate(holders) if i == 0 or h != holders[i - 1]]
    assert passes == [leader_name, standby_name, "op-c"], passes
    assert samples[-1].transitions == 2  # created by the first, then passed on twice
    span = samples[-1].at - samples[0].at
    say(f"{len(samples)} samples of the Lease and the processes over {span:.0f}s")


def test_a_leader_that_cannot_renew_exits_before_the_lease_expires(
    api_client: client.ApiClient, namespace: str, candidates: Candidates
) -> None:
    """The leader loses the right to renew (its Lease Role's binding deleted): within the renew
    deadline of its last renewal it exits (code 1, for the kubelet to restart it as a standby),
    before the Lease, renewed last at that renewal, could expire for anyone else."""
    leader = candidates("op-a")
    leader.start()
    wait_for(lambda: runs_kopf(leader), timeout=15, message="op-a never ran Kopf")
    leases = client.CoordinationV1Api(api_client)
    spec = leases.read_namespaced_lease(LEASE, namespace).spec
    assert spec is not None
    assert (spec.holder_identity or "").startswith("op-a_")
    candidates.refusals_expected = re.compile(r"the Lease .* 403 Forbidden")
    client.RbacAuthorizationV1Api(api_client).delete_namespaced_role_binding(
        LEADER_ELECTION, namespace
    )
    cut = time.monotonic()
    assert leader.process is not None
    assert leader.process.wait(timeout=20) == 1, leader.log_tail()
    exited_after = time.monotonic() - cut
    exit_line = next(line for line in leader.log_text().splitlines() if "exiting:" in line)
    exited_at = datetime.strptime(exit_line[1:24], "%Y-%m-%d %H:%M:%S,%f").astimezone(UTC)
    lease = leases.read_namespaced_lease(LEASE, namespace)
    assert lease.spec is not None
    assert lease.spec.renew_time is not None
    since_renewal = (exited_at - lease.spec.renew_time).total_seconds()
    say(
        f"renewals refused: the leader exited {exited_after:.1f}s after the cut,"
        f" {since_renewal:.1f}s after its last renewal (lease duration 10s)"
    )
    assert "could not renew it for 7 s" in exit_line
    # It kept trying for the renew deadline (7 s, from just before that renewal was sent), and
    # exited well before the others may take over (10 s after they saw the renewal).
    assert 6.5 <= since_renewal < 9
