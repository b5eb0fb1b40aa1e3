"""Lifecycle: what the operator holds for its CeleryClusters goes away with them (issue 12).

Twenty CeleryClusters on one Redis, each an autoscaled pool at zero and beat off; every other one
also a pool of one real worker (solo, no probes), so that hung-worker cycles, the autoscaler and
the task-event receiver all run against a live worker. Once every cluster is reconciled (it has a
``status.phase``) and those workers are Ready, all twenty are deleted. Within one reconcile
interval plus ``MARGIN`` the operator's threads, broker connections and ``/metrics`` series
labelled with these clusters must be back where they were before.

The operator runs as a process of its own (``tests/e2e/opproc.py``), reconciling and checking
workers every 3 s, so its threads and sockets are its own. What "before" means:

* broker connections and series: the operator just started, before it saw any cluster (0 and
  0). A connection to a broker no cluster uses any more, or a series of a deleted cluster, is
  left behind.
* threads: after a warm-up round of twenty clusters at zero, created and deleted, plus
  ``THREAD_TOLERANCE``. Pools that start threads as work comes and keep them are not per-cluster
  state: asyncio's default executor, which runs every reconcile, grows to min(32, CPUs + 4)
  threads (6 here) the first time twenty clusters reconcile at once, and stays. The warm-up lets
  it grow; a thread kept per deleted cluster still adds twenty in the measured round.
  ``THREAD_TOLERANCE`` (2) covers threads that come and go on their own: the ``/metrics``
  server answers each scrape in a thread of its own, and the previous scrape's may not have
  exited yet; Kopf's executor may start one more for its liveness probe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from kubernetes import client

from tests.e2e.harness import Clusters
from tests.e2e.kube import wait_for
from tests.e2e.opproc import (
    Holdings,
    OperatorProcess,
    broker_client,
    holdings,
    operator_under_test,
    phases,
    ready_pods,
    say,
    settle,
)

CLUSTERS: Final = 20
PREFIX: Final = "life-"
INTERVAL: Final = 3.0
"""Reconcile and hung-worker intervals of the operator under test, seconds."""
MARGIN: Final = 10.0
"""Beyond one reconcile interval: a hung-worker cycle in flight when its cluster goes (three
broadcasts of 2 s each), the event receiver's one-second stop, the 0.2 s debounce."""
THREAD_TOLERANCE: Final = 2
READY_TIMEOUT: Final = 240.0
WORKER_ARGS: Final = ["--without-gossip", "--without-mingle", "--without-heartbeat"]


def _idle_pool(name: str) -> dict[str, Any]:
    return {
        "name": "idle",
        "queues": [name],
        "autoscaling": {"minReplicas": 0, "maxReplicas": 3},
    }


def _worker_pool(name: str) -> dict[str, Any]:
    return {
        "name": "solo",
        "queues": [f"{name}-solo"],
        "pool": "solo",
        "concurrency": 1,
        "replicas": 1,
        "extraArgs": WORKER_ARGS,
    }


def _create_round(
    clusters: Clusters,
    api_client: client.ApiClient,
    sample_spec: Callable[..., dict[str, Any]],
    names: list[str],
    with_worker: set[str],
) -> None:
    for name in names:
        spec = sample_spec()
        spec["beat"] = {"enabled": False}
        spec["probes"] = {"enabled": False}
        spec["workers"] = [_idle_pool(name)] + ([_worker_pool(name)] if name in with_worker else [])
        clusters.create(name, spec)
    wait_for(
        lambda: all(phases(api_client, clusters.namespace).get(n) for n in names),
        timeout=READY_TIMEOUT,
        interval=1,
        message=f"not every one of {len(names)} CeleryClusters has a status.phase",
    )
    wait_for(
        lambda: ready_pods(api_client, clusters.namespace) >= len(with_worker),
        timeout=READY_TIMEOUT,
        interval=1,
        message=f"{len(with_worker)} worker pods not Ready",
    )


def _delete_round(clusters: Clusters, api_client: client.ApiClient, names: list[str]) -> None:
    for name in names:
        clusters.delete(name)
    wait_for(
        lambda: not phases(api_client, clusters.namespace),
        timeout=60,
        message="CeleryClusters still listed after deletion",
    )


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def test_deleted_clusters_leave_nothing_behind(
    crd: None,
    kubeconfig: str,
    namespace: str,
    api_client: client.ApiClient,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
    tmp_path: Path,
) -> None:
    source, commit = operator_under_test(tmp_path)
    env = {
        "CELERY_OPERATOR_RECONCILE_INTERVAL_SECONDS": str(INTERVAL),
        "CELERY_OPERATOR_HEALTH_INTERVAL_SECONDS": str(INTERVAL),
    }
    operator = OperatorProcess(
        namespace, kubeconfig, tmp_path / "operator.log", env=env, source=source
    )
    port = _port(redis_url)
    with operator, broker_client(redis_url) as broker:

        def read() -> Holdings:
            return holdings(operator, broker, port, PREFIX)

        cold, _ = settle(read, Holdings.key, at_least=2, stable_for=2, timeout=10)

        warm_names = [f"{PREFIX}warm-{i:02d}" for i in range(CLUSTERS)]
        _create_round(clusters, api_client, sample_spec, warm_names, set())
        _delete_round(clusters, api_client, warm_names)
        warm, _ = settle(read, Holdings.key, at_least=INTERVAL, stable_for=3, timeout=30)

        names = [f"{PREFIX}{i:02d}" for i in range(CLUSTERS)]
        with_worker = set(names[::2])
        _create_round(clusters, api_client, sample_spec, names, with_worker)
        loaded, _ = settle(read, Holdings.key, at_least=2 * INTERVAL, stable_for=3, timeout=30)
        _delete_round(clusters, api_client, names)

        def returned(held: Holdings) -> bool:
            return (
                held.threads <= warm.threads + THREAD_TOLERANCE
                and held.broker_connections <= cold.broker_connections
                and held.series <= cold.series
            )

        after, waited = settle(
            read, Holdings.key, at_least=0, stable_for=INTERVAL + MARGIN,
            timeout=INTERVAL + MARGIN, done=returned,
        )  # fmt: skip
        log_tail = operator.log_tail(20)
        tracebacks = operator.tracebacks()

    figures = (
        f"operator at {commit}; {CLUSTERS} clusters ({len(with_worker)} with a worker); "
        f"threads / broker connections / series: before {cold.threads}/"
        f"{cold.broker_connections}/{cold.series}, after the warm-up round {warm.threads}/"
        f"{warm.broker_connections}/{warm.series}, with the clusters {loaded.threads}/"
        f"{loaded.broker_connections}/{loaded.series}, {waited:.0f} s after deleting them "
        f"{after.threads}/{after.broker_connections}/{after.series}; series left by metric: "
        f"{dict(after.series_by_name)}; connections left by last command: "
        f"{dict(after.broker_commands)}; tracebacks in the log: {tracebacks}"
    )
    say(f"\nlifecycle: {figures}")
    problems = []
    if after.threads > warm.threads + THREAD_TOLERANCE:
        problems.append(
            f"{after.threads} threads, more than {warm.threads} + {THREAD_TOLERANCE} before"
        )
    if after.broker_connections > cold.broker_connections:
        problems.append(
            f"{after.broker_connections} broker connections, {cold.broker_connections} before"
        )
    if after.series > cold.series:
        problems.append(f"{after.series} /metrics series of deleted clusters")
    if tracebacks:
        problems.append(f"{tracebacks} tracebacks in its log")
    assert not problems, (
        f"{INTERVAL + MARGIN:g} s after deleting every CeleryCluster the operator is not back "
        f"where it was: {'; '.join(problems)}.\n{figures}\noperator log tail:\n{log_tail}"
    )
