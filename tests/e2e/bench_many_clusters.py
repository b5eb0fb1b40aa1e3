"""Benchmark: what the operator costs with many CeleryClusters, and what it keeps after they go.

Run with ``make bench`` (or ``pytest tests/e2e/bench_many_clusters.py -q -s -p no:logging``); it
prints figures against the targets of issue 12 and asserts nothing about them (a shared 2-core
machine makes timed assertions flaky). The operator runs as a process of its own
(``tests/e2e/opproc.py``) with its default settings (reconcile every 15 s, hung-worker cycles
every 10 s), so that its CPU, memory, threads and sockets are its own; one Redis per test.

``test_bench_idle_clusters``: ``BENCH_IDLE_CLUSTERS`` (50) CeleryClusters on one Redis, each one
autoscaled pool at zero (``minReplicas: 0``), beat off, no Flower: no pods at all. The operator
idle before any, with all of them, and after deleting them all: CPU over ``BENCH_WINDOW`` (60) s
as % of one core, RSS, threads, broker connections, API-server connections and ``/metrics``
series labelled with the benchmark's clusters.

``test_bench_worker_pods``: ``BENCH_WORKER_CLUSTERS`` (20) CeleryClusters of
``BENCH_REPLICAS`` (5) real workers each (solo pool, no probes, without gossip, mingle and
heartbeat; hung-worker monitoring on by default; autoscaled 5..10 with no load) on one Redis:
how long until every worker pod is Ready, then the same figures with them running, and after
deleting them. If not every pod fits the machine, the figures are for those that did, with why.

``E2E_OPERATOR_AT=<commit>`` runs that commit's operator instead of the working tree's.
With ``py-spy`` in the venv (``.venv/bin/pip install py-spy``) each test also samples the loaded
operator for ``BENCH_PROFILE`` (30) s and prints where its CPU goes.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import redis
from kubernetes import client

from tests.e2e.harness import Clusters
from tests.e2e.kube import wait_for
from tests.e2e.opproc import (
    CpuFigure,
    Holdings,
    OperatorProcess,
    Profile,
    broker_client,
    broker_consumers,
    holdings,
    is_ready,
    measure_cpu,
    metric_total,
    operator_under_test,
    phases,
    pod_cpu_seconds,
    profile,
    python_threads,
    ready_pods,
    say,
    settle,
    worker_pods,
)

IDLE_CLUSTERS: Final = int(os.environ.get("BENCH_IDLE_CLUSTERS", "50"))
WORKER_CLUSTERS: Final = int(os.environ.get("BENCH_WORKER_CLUSTERS", "20"))
REPLICAS: Final = int(os.environ.get("BENCH_REPLICAS", "5"))
WINDOW: Final = float(os.environ.get("BENCH_WINDOW", "60"))
PROFILE_SECONDS: Final = float(os.environ.get("BENCH_PROFILE", "30"))
RECONCILE_INTERVAL: Final = 15.0
"""The operator's default ``reconcile_interval_seconds``, which the benchmark keeps."""
HEALTH_INTERVAL: Final = 10.0
"""The operator's default ``health_interval_seconds``."""
SETTLE_MARGIN: Final = 30.0
"""After deleting: poll for up to one reconcile interval plus this long for the holdings to
stop changing."""
STABLE_FOR: Final = 5.0
RECONCILED_TIMEOUT: Final = 300.0
PODS_READY_TIMEOUT: Final = float(os.environ.get("BENCH_PODS_TIMEOUT", "900"))
PODS_STALLED: Final = 180.0
"""Stop waiting for pods once none has become Ready for this long."""
PODS_GONE_TIMEOUT: Final = 240.0
PREFIX: Final = "bench-"
RESTARTS: Final = "celery_operator_worker_restarts_total"
THREAD_TOLERANCE: Final = 2
"""Threads not counted as growth: the ``/metrics`` server answers each scrape in a thread of its
own, and Kopf's executor may start one for its liveness probe (see tests/e2e/test_lifecycle.py)."""
OUR_FRAME: Final = "(celery_operator/"
WORKER_ARGS: Final = ["--without-gossip", "--without-mingle", "--without-heartbeat"]

TARGETS: Final = {
    "idle": "CPU <= 2 % of a core, <= 10 broker connections, threads not growing with clusters, "
    "nothing left after deletion",
    "workers": "CPU <= 5 % of a core, RSS <= 200 MB",
}
ISSUE_NOW: Final = (
    "issue 12's 'now': 14.2 % of a core, 211 Redis connections, 53 more threads; after "
    "deleting: threads 75 (22 before), 211 connections, 1,450 series left"
)


@dataclass(frozen=True)
class Row:
    label: str
    clusters: int
    pods: int
    held: Holdings
    cpu: CpuFigure | None = None
    commands_per_second: float | None = None
    """Commands the Redis server ran per second over the CPU window, from every client."""
    command_rates: Mapping[str, float] | None = None
    """The same by command (``publish``: pidbox broadcasts and replies; ``brpop``: consumers)."""
    workers_cores: float | None = None
    """Cores the worker pods kept busy over the window, all of them together (their cgroups)."""
    thread_names: Counter[str] | None = None
    pods_kept: int = 0
    """Worker pods that were there from the start to the end of the window (``workers_cores``
    is theirs; a pod deleted meanwhile, say by a hung-worker restart, is left out)."""


def _command_calls(broker: redis.Redis[bytes]) -> Counter[str]:
    stats: Mapping[str, Any] = broker.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()})


def _pods_cpu(uids: list[str]) -> dict[str, float]:
    """CPU seconds of each pod whose cgroup is found (a pod deleted meanwhile has none)."""
    readings = {uid: pod_cpu_seconds(uid) for uid in uids}
    return {uid: seconds for uid, seconds in readings.items() if seconds is not None}


def _measure(
    label: str,
    operator: OperatorProcess,
    broker: redis.Redis[bytes],
    broker_port: int,
    clusters: int,
    pods: int,
    window: float | None = WINDOW,
    pod_uids: list[str] | None = None,
) -> Row:
    if not window:
        held = holdings(operator, broker, broker_port, PREFIX)
        return Row(label, clusters, pods, held, thread_names=python_threads(operator.pid))
    calls = _command_calls(broker)
    workers = _pods_cpu(pod_uids or [])
    cpu = measure_cpu(operator.pid, window)
    workers_after = _pods_cpu(pod_uids or [])
    rates = {k: n / cpu.seconds for k, n in (_command_calls(broker) - calls).items()}
    both = workers.keys() & workers_after.keys()
    cores = sum(workers_after[u] - workers[u] for u in both) / cpu.seconds if both else None
    pods_kept = len(both) if both else pods
    held = holdings(operator, broker, broker_port, PREFIX)
    return Row(
        label, clusters, pods, held, cpu, sum(rates.values()), rates, cores,
        python_threads(operator.pid), pods_kept,
    )  # fmt: skip


def _table(rows: list[Row]) -> None:
    say(
        f"{'':<34}{'clusters':>9}{'pods':>6}{'CPU %core':>11}{'RSS MiB':>9}{'threads':>9}"
        f"{'broker':>8}{'API':>5}{'series':>8}{'redis cmd/s':>13}{'machine busy':>14}"
    )
    for row in rows:
        cpu = f"{row.cpu.percent_of_core:.1f}" if row.cpu else "-"
        busy = f"{row.cpu.machine_busy_cores:.2f} cores" if row.cpu else "-"
        rate = f"{row.commands_per_second:.0f}" if row.commands_per_second is not None else "-"
        say(
            f"{row.label:<34}{row.clusters:>9}{row.pods:>6}{cpu:>11}{row.held.rss_mib:>9.1f}"
            f"{row.held.threads:>9}{row.held.broker_connections:>8}{row.held.api_connections:>5}"
            f"{row.held.series:>8}{rate:>13}{busy:>14}"
        )
    say(
        "  (broker: Redis CLIENT LIST entries on the operator's sockets; API: its connections to "
        'the API server; series: /metrics samples labelled cluster="bench-…"; machine busy: '
        "all of this 2-core machine's CPU over the same window, the noise)"
    )


def _top(counts: Mapping[str, int] | None, n: int = 8) -> str:
    if counts is None:
        return "(needs py-spy)"
    return ", ".join(f"{name} {count}" for name, count in Counter(counts).most_common(n)) or "none"


def _details(rows: list[Row]) -> None:
    """Who holds the threads and connections, and which series are left."""
    for row in rows:
        say(f"  {row.label}:")
        say(f"    threads: {_top(row.thread_names)}")
        say(f"    broker connections by last command: {_top(row.held.broker_commands)}")
        if row.command_rates:
            rates = Counter(row.command_rates).most_common(8)
            say(
                "    Redis commands/s, every client: " + ", ".join(f"{k} {v:.1f}" for k, v in rates)
            )
        if row.workers_cores is not None and row.pods_kept:
            say(
                f"    worker pods' CPU: {row.workers_cores:.2f} cores for the {row.pods_kept} "
                f"there all window long, {100 * row.workers_cores / row.pods_kept:.2f} % of a "
                "core each"
            )
        if row.clusters == 0 and row.held.series:
            say(f"    series left, by metric: {_top(row.held.series_by_name)}")


def _thread_growth(loaded: Row, base: Row) -> tuple[int, str]:
    """Threads added with the clusters, less asyncio's default executor (``asyncio_N``: it
    starts threads as work comes, up to min(32, CPUs + 4), whatever the number of clusters)."""
    growth = loaded.held.threads - base.held.threads
    if loaded.thread_names is None or base.thread_names is None:
        return growth, f"+{growth}"
    executor = loaded.thread_names["asyncio_N"] - base.thread_names["asyncio_N"]
    return growth - executor, f"+{growth} (+{executor} of them asyncio's default executor)"


def _print_profile(found: Profile | None, top: int = 12) -> None:
    if found is None:
        say("(no py-spy in the venv: `.venv/bin/pip install py-spy` to see where the CPU goes)")
        return
    total = max(1, found.samples)
    cpu = 100 * found.samples / found.rate / found.seconds
    say(
        f"where the CPU goes (py-spy --gil, {found.seconds:g} s at {found.rate} Hz: "
        f"{found.samples} samples with the GIL held, {cpu:.1f} % of the time):"
    )
    say("  by thread:  " + "; ".join(
        f"{name} {100 * n / total:.0f} %" for name, n in found.by_thread.most_common(8)
    ))  # fmt: skip
    say("  the operator's functions, with what they call (inclusive):")
    ours = Counter({k: n for k, n in found.inclusive.items() if OUR_FRAME in k})
    for name, n in ours.most_common(top):
        say(f"    {100 * n / total:5.1f} %  {name}")
    say("  by function, its own code only (self):")
    for name, n in found.self_samples.most_common(top):
        say(f"    {100 * n / total:5.1f} %  {name}")


def _create(clusters: Clusters, names: list[str], make: Callable[[str], dict[str, Any]]) -> None:
    for name in names:
        clusters.create(name, make(name))


def _wait_reconciled(api_client: client.ApiClient, namespace: str, names: list[str]) -> float:
    started = time.monotonic()
    wait_for(
        lambda: all(phases(api_client, namespace).get(n) for n in names),
        timeout=RECONCILED_TIMEOUT,
        interval=1,
        message=f"not every one of {len(names)} CeleryClusters has a status.phase",
    )
    return time.monotonic() - started


def _delete(clusters: Clusters, api_client: client.ApiClient, names: list[str]) -> None:
    for name in names:
        clusters.delete(name)
    wait_for(
        lambda: not phases(api_client, clusters.namespace),
        timeout=60,
        message="CeleryClusters still listed after deletion",
    )


def _after_deletion(
    operator: OperatorProcess,
    broker: redis.Redis[bytes],
    broker_port: int,
    baseline: Holdings,
) -> tuple[Holdings, float]:
    return settle(
        lambda: holdings(operator, broker, broker_port, PREFIX),
        Holdings.key,
        at_least=RECONCILE_INTERVAL,
        stable_for=STABLE_FOR,
        timeout=RECONCILE_INTERVAL + SETTLE_MARGIN,
        done=lambda held: held.key() == baseline.key(),
    )


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _returned(after: Row, base: Row) -> bool:
    """Nothing left: no more broker connections and series than before, and no more threads
    than before but asyncio's default executor's and ``THREAD_TOLERANCE``."""
    growth, _ = _thread_growth(after, base)
    return (
        growth <= THREAD_TOLERANCE
        and after.held.broker_connections <= base.held.broker_connections
        and after.held.series <= base.held.series
    )


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def test_bench_idle_clusters(
    crd: None,
    kubeconfig: str,
    namespace: str,
    api_client: client.ApiClient,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
    tmp_path: Path,
) -> None:
    def idle(name: str) -> dict[str, Any]:
        spec = sample_spec(queues=[name], autoscaling={"minReplicas": 0, "maxReplicas": 3})
        spec["beat"] = {"enabled": False}
        return spec

    names = [f"{PREFIX}{i:03d}" for i in range(IDLE_CLUSTERS)]
    port = _port(redis_url)
    source, commit = operator_under_test(tmp_path)
    operator = OperatorProcess(namespace, kubeconfig, tmp_path / "operator.log", source=source)
    with operator, broker_client(redis_url) as broker:
        settle(
            lambda: holdings(operator, broker, port, PREFIX),
            Holdings.key,
            at_least=STABLE_FOR,
            stable_for=STABLE_FOR,
            timeout=30,
        )
        rows = [_measure("operator idle, no clusters", operator, broker, port, 0, 0)]
        _create(clusters, names, idle)
        reconciled = _wait_reconciled(api_client, namespace, names)
        settle(  # every loop past its first reconcile and its autoscaler started
            lambda: holdings(operator, broker, port, PREFIX),
            Holdings.key,
            at_least=RECONCILE_INTERVAL,
            stable_for=STABLE_FOR,
            timeout=RECONCILE_INTERVAL + SETTLE_MARGIN,
        )
        loaded = _measure(f"{IDLE_CLUSTERS} clusters, pools at zero", operator, broker, port,
                          IDLE_CLUSTERS, 0)  # fmt: skip
        rows.append(loaded)
        found = profile(operator.pid, PROFILE_SECONDS) if PROFILE_SECONDS else None
        _delete(clusters, api_client, names)
        after, waited = _after_deletion(operator, broker, port, rows[0].held)
        rows.append(
            Row(
                f"deleted, after {waited:.0f} s",
                0,
                0,
                after,
                thread_names=python_threads(operator.pid),
            )
        )
        rows.append(_measure(f"deleted, {WINDOW:g} s later", operator, broker, port, 0, 0))
        tracebacks = operator.tracebacks()

    base = rows[0]
    say(
        f"\nmany idle clusters: {IDLE_CLUSTERS} CeleryClusters on one Redis, each one autoscaled "
        f"pool at zero (no pods), beat off; operator at {commit}, default settings (reconcile "
        f"{RECONCILE_INTERVAL:g} s), CPU over {WINDOW:g} s; all {IDLE_CLUSTERS} reconciled "
        f"{reconciled:.0f} s after creation"
    )
    _table(rows)
    assert loaded.cpu is not None
    last = rows[-1].held
    growth, growth_text = _thread_growth(loaded, base)
    _, left_text = _thread_growth(rows[-1], base)
    say(f"targets ({TARGETS['idle']}):")
    say(
        f"  CPU {loaded.cpu.percent_of_core:.1f} % ({_verdict(loaded.cpu.percent_of_core <= 2)}); "
        f"broker connections {loaded.held.broker_connections} "
        f"({_verdict(loaded.held.broker_connections <= 10)}); threads "
        f"{growth_text} with {IDLE_CLUSTERS} clusters ({_verdict(growth <= THREAD_TOLERANCE)}); "
        f"after deletion threads {left_text} over the {base.held.threads} before, connections "
        f"{last.broker_connections}, series {last.series} ({_verdict(_returned(rows[-1], base))})"
    )
    say(f"  {ISSUE_NOW}")
    _details(rows)
    say(f"  tracebacks in the operator's log: {tracebacks}")
    _print_profile(found)
    assert len(rows) == 4  # figures, not a pass/fail on cost


def _pods_ready(
    api_client: client.ApiClient, namespace: str, expected: int
) -> tuple[int, float, dict[int, float]]:
    """Poll until ``expected`` worker pods are Ready, none became Ready for ``PODS_STALLED`` s,
    or ``PODS_READY_TIMEOUT``; (Ready pods, seconds, seconds at which each quarter was Ready)."""
    started = time.monotonic()
    best, best_at = 0, started
    marks: dict[int, float] = {}
    while True:
        ready = ready_pods(api_client, namespace)
        now = time.monotonic()
        for quarter in (1, 2, 3, 4):
            if ready >= expected * quarter // 4 and quarter not in marks:
                marks[quarter] = now - started
        if ready > best:
            best, best_at = ready, now
        if ready >= expected or now - best_at > PODS_STALLED or now - started > PODS_READY_TIMEOUT:
            return ready, now - started, marks
        time.sleep(2)


def _churn(pods: list[client.V1Pod], measured: list[str]) -> str:
    """Pods replaced (say, deleted as hung and recreated) and containers restarted since the
    measured pods were listed."""
    uids = {str(p.metadata and p.metadata.uid) for p in pods}
    restarts = sum(
        s.restart_count or 0 for p in pods for s in (p.status and p.status.container_statuses) or []
    )
    return (
        f"{len(set(measured) - uids)} of the {len(measured)} pods replaced, {restarts} container "
        f"restarts, {sum(1 for p in pods if is_ready(p))} pods Ready at the end"
    )


def _wait_consuming(broker: redis.Redis[bytes], pid: int, port: int, expected: int) -> int:
    """Wait until ``expected`` workers consume (a Ready pod without probes is one whose container
    started: Celery may still be importing); stop early once the count stalls."""
    started = time.monotonic()
    best, best_at = 0, started
    while True:
        consuming = broker_consumers(broker, pid, port)
        now = time.monotonic()
        if consuming > best:
            best, best_at = consuming, now
        if consuming >= expected or now - best_at > PODS_STALLED:
            return consuming
        if now - started > PODS_READY_TIMEOUT:
            return consuming
        time.sleep(1)


def _why_not_ready(api_client: client.ApiClient, namespace: str) -> list[str]:
    """Why pods are not Ready: phases, waiting reasons, scheduling messages, node capacity."""
    core = client.CoreV1Api(api_client)
    pods = worker_pods(api_client, namespace)
    states: Counter[str] = Counter()
    for pod in pods:
        if is_ready(pod):
            continue
        status = pod.status
        waiting = [
            str(s.state.waiting.reason)
            for s in (status and status.container_statuses) or []
            if s.state and s.state.waiting
        ]
        states[f"{status and status.phase}" + (f" ({', '.join(waiting)})" if waiting else "")] += 1
    lines = [f"not Ready: {dict(states) or 'none'}"]
    events = core.list_namespaced_event(namespace, field_selector="reason=FailedScheduling")
    messages = Counter(e.message or "" for e in events.items)
    lines += [f"FailedScheduling x{n}: {m}" for m, n in messages.most_common(3)]
    for node in core.list_node().items:
        allocatable = (node.status and node.status.allocatable) or {}
        running = core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node.metadata and node.metadata.name}"
        ).items
        lines.append(
            f"node {node.metadata and node.metadata.name}: {len(running)} pods of "
            f"{allocatable.get('pods')} allowed, allocatable cpu {allocatable.get('cpu')}, "
            f"memory {allocatable.get('memory')}"
        )
    return lines


def _mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _node_pods(api_client: client.ApiClient) -> int:
    return len(client.CoreV1Api(api_client).list_pod_for_all_namespaces().items)


def test_bench_worker_pods(
    crd: None,
    kubeconfig: str,
    namespace: str,
    api_client: client.ApiClient,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
    tmp_path: Path,
) -> None:
    def workers(name: str) -> dict[str, Any]:
        spec = sample_spec(
            queues=[name],
            pool="solo",
            concurrency=1,
            extraArgs=WORKER_ARGS,
            autoscaling={"minReplicas": REPLICAS, "maxReplicas": 2 * REPLICAS},
        )
        spec["beat"] = {"enabled": False}
        spec["probes"] = {"enabled": False}
        return spec

    names = [f"{PREFIX}{i:03d}" for i in range(WORKER_CLUSTERS)]
    expected = WORKER_CLUSTERS * REPLICAS
    port = _port(redis_url)
    source, commit = operator_under_test(tmp_path)
    pods_before = _node_pods(api_client)
    memory_before = _mem_available_mib()
    operator = OperatorProcess(namespace, kubeconfig, tmp_path / "operator.log", source=source)
    with operator, broker_client(redis_url) as broker:
        rows = [_measure("operator idle, no clusters", operator, broker, port, 0, 0, window=None)]
        created = time.monotonic()
        _create(clusters, names, workers)
        ready, took, marks = _pods_ready(api_client, namespace, expected)
        why = _why_not_ready(api_client, namespace) if ready < expected else []
        consuming = _wait_consuming(broker, operator.pid, port, ready)
        booted = time.monotonic() - created
        memory_per_pod = (memory_before - _mem_available_mib()) / max(1, ready)
        time.sleep(HEALTH_INTERVAL)  # one hung-worker cycle over every pod before measuring
        restarts_before = metric_total(operator.metrics_port, RESTARTS, PREFIX)
        running = [p for p in worker_pods(api_client, namespace) if is_ready(p)]
        uids = [str(p.metadata and p.metadata.uid) for p in running]
        loaded = _measure(f"{WORKER_CLUSTERS} clusters, {len(running)} workers Ready", operator,
                          broker, port, WORKER_CLUSTERS, len(running), pod_uids=uids)  # fmt: skip
        rows.append(loaded)
        found = profile(operator.pid, PROFILE_SECONDS) if PROFILE_SECONDS else None
        churn = _churn(worker_pods(api_client, namespace), uids)
        restarts = metric_total(operator.metrics_port, RESTARTS, PREFIX)
        deleting = time.monotonic()
        _delete(clusters, api_client, names)
        wait_for(
            lambda: not worker_pods(api_client, namespace),
            timeout=PODS_GONE_TIMEOUT,
            interval=2,
            message="worker pods still there after deleting their CeleryClusters",
        )
        gone = time.monotonic() - deleting
        after, waited = _after_deletion(operator, broker, port, rows[0].held)
        rows.append(
            Row(f"deleted, pods gone, after {waited:.0f} s", 0, 0, after,
                thread_names=python_threads(operator.pid))
        )  # fmt: skip
        rows.append(_measure(f"deleted, {WINDOW:g} s later", operator, broker, port, 0, 0))
        tracebacks = operator.tracebacks()

    say(
        f"\nmany workers: {WORKER_CLUSTERS} CeleryClusters x {REPLICAS} workers (solo, no probes, "
        f"{' '.join(WORKER_ARGS)}, hung-worker monitoring on, autoscaled {REPLICAS}.."
        f"{2 * REPLICAS}, no load) on one Redis; operator at {commit}, default settings, CPU "
        f"over {WINDOW:g} s; {pods_before} pods on the node before"
    )
    quarters = ", ".join(f"{expected * q // 4} in {s:.0f} s" for q, s in sorted(marks.items()))
    say(
        f"{ready}/{expected} worker pods Ready in {took:.0f} s ({quarters}; Ready is the "
        f"container started: no probes), {consuming} of them booted and consuming (waiting in "
        f"BRPOP) {booted:.0f} s after creation; about "
        f"{memory_per_pod:.0f} MiB of the machine's memory per worker pod; all pods gone "
        f"{gone:.0f} s after deleting"
    )
    say(
        f"  hung-worker restarts ({RESTARTS}): {restarts_before:.0f} while the workers booted, "
        f"{restarts - restarts_before:.0f} more while measuring and profiling; {churn}"
    )
    for line in why:
        say(f"  {line}")
    _table(rows)
    assert loaded.cpu is not None
    say(
        f"targets ({TARGETS['workers']}): CPU {loaded.cpu.percent_of_core:.1f} % "
        f"({_verdict(loaded.cpu.percent_of_core <= 5)}), RSS {loaded.held.rss_mib:.0f} MiB "
        f"({_verdict(loaded.held.rss_mib * 1.048576 <= 200)}); after deletion threads "
        f"{_thread_growth(rows[-1], rows[0])[1]} over the {rows[0].held.threads} before, "
        f"connections {rows[-1].held.broker_connections}, series {rows[-1].held.series} "
        f"(nothing left: {_verdict(_returned(rows[-1], rows[0]))})"
    )
    _details(rows)
    say(f"  tracebacks in the operator's log: {tracebacks}")
    _print_profile(found)
    assert len(rows) == 4  # figures, not a pass/fail on cost
