"""What hung-worker monitoring costs, and how fast it acts: 1, 10 and 50 real workers.

    .venv/bin/python -m tests.bench.bench_hung [--sizes 1,10,50] [--cycles 5]

For each size N it starts a private ``redis-server`` and N demo-app workers (solo pool, one
process each) named ``default@bench-pod-<i>``, as the operator's pods of pool ``default`` are, and
drives the operator's own ``HealthMonitor`` with the operator's census (``remote.control_app``
and ``remote.census``, 2 s timeout). It measures:

* per cycle against N healthy workers: the census's wall time, the broker's commands (``INFO
  stats``, net of what the idle workers send anyway), the pidbox PUBLISHes and the messages the
  broker delivers for them (``MONITOR``: publishes x the workers' PSUBSCRIBE). Probing the workers
  one by one instead would cost N publishes x N deliveries: N^2, computed here, not run;
* detection to restart: one worker is frozen (SIGSTOP, as a deadlock or a blocked main loop would
  leave it), monitor cycles run when due (2 s interval, ``unresponsiveCycles: 3``), and the time
  from the SIGSTOP until a cycle decides to restart that pod (what the reconcile carries out by
  deleting it) is reported in seconds and in cycles.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Final

from celery_operator import remote
from celery_operator.health import HealthReport, Reply, WorkerPod
from celery_operator.monitor import HealthMonitor
from celery_operator.queues import KeyScheme
from celery_operator.spec import ClusterSpec, parse_cluster
from tests.bench.bench_probes import PIDBOX_CHANNEL, BrokerMonitor, combine, measure
from tests.integration.procs import (
    CeleryProcess,
    RedisServer,
    demo_env,
    start_celery,
    wait_for,
)

POOL: Final = "default"
KEY: Final = ("bench", "bench-hung")
CENSUS_TIMEOUT: Final = 2.0
"""The operator's default ``CENSUS_TIMEOUT_SECONDS``."""
INTERVAL: Final = 2.0
"""Seconds between the starts of two monitor cycles (``HEALTH_INTERVAL_SECONDS``)."""
UNRESPONSIVE_CYCLES: Final = 3
BROADCASTS: Final = 3
"""ping, stats and active: one broadcast each per cycle."""
STOPPED: Final = 1
"""The worker frozen in the detection run: bench-pod-1."""
POD_AGE: Final = timedelta(hours=1)
"""Every pod is long past its startup time, so a silent one is judged as soon as it has missed."""
IDLE_WINDOW: Final = 5.0
"""Shortest idle window over which the workers' background traffic is measured."""
SPARE_CYCLES: Final = 5
"""Cycles beyond ``unresponsiveCycles`` after which a missing restart is an error."""


@dataclass(frozen=True)
class HungCost:
    """What monitoring ``workers`` workers costs per cycle, and how long a frozen one lasts.

    Totals are kept as counted; per-cycle figures derive from them, so deterministic facts can be
    asserted exactly.
    """

    workers: int
    cycles: int
    census_seconds: tuple[float, ...]
    """Wall time of each healthy cycle's census (three broadcasts, every reply in)."""
    answering: tuple[int, ...]
    """Workers that answered, per healthy cycle."""
    window_seconds: float
    commands_total: int
    """Commands the broker ran during the healthy cycles (``INFO stats``), without our own."""
    idle_commands: float
    """Commands the idle workers would have sent anyway in windows this long."""
    pidbox_publishes_total: int
    pidbox_subscribers: int
    deliveries_total: int
    """Messages the broker pushed to subscribers for the pidbox publishes."""
    stopped_pod: str
    restarted_pods: tuple[str, ...]
    """Every restart the monitor decided, in order, over all of this size's cycles."""
    detection_seconds: float
    """From the SIGSTOP until the cycle that decided the restart returned."""
    detection_cycles: int
    """Cycles run after the SIGSTOP, the deciding one included."""
    silent_cycle_seconds: tuple[float, ...]
    """Wall time of each of those cycles: a silent worker makes the ping wait out its timeout."""

    @property
    def census_wall(self) -> float:
        return statistics.fmean(self.census_seconds)

    @property
    def redis_commands(self) -> float:
        return (self.commands_total - self.idle_commands) / self.cycles

    @property
    def pidbox_publishes(self) -> float:
        return self.pidbox_publishes_total / self.cycles

    @property
    def deliveries(self) -> float:
        return self.deliveries_total / self.cycles

    @property
    def deliveries_one_by_one(self) -> int:
        """Computed, not run: one targeted ping per worker still reaches every worker."""
        return self.workers * self.workers


def pod_name(i: int) -> str:
    return f"bench-pod-{i}"


def cluster_spec(workers: int) -> ClusterSpec:
    """One pool, ``default``, restarting workers that miss ``UNRESPONSIVE_CYCLES`` cycles.

    Without liveness probes: with them the monitor leaves a silence to the kubelet first (about
    65 s by default), and no kubelet runs here; this measures the monitor's own detection."""
    return parse_cluster(
        KEY[1],
        {
            "image": "x",
            "app": "celery_demo",
            "broker": {"urlSecretRef": {"name": "b"}},
            "probes": {"enabled": False},
            "workers": [
                {
                    "name": POOL,
                    "queues": ["celery"],
                    "replicas": workers,
                    "hungWorkers": {"unresponsiveCycles": UNRESPONSIVE_CYCLES},
                }
            ],
        },
    )


def worker_pods(workers: int) -> list[WorkerPod]:
    """The pods as the reconcile would read them: running, ready, an hour old."""
    return [
        WorkerPod(
            name=pod_name(i),
            uid=str(i),
            pool=POOL,
            running=True,
            ready=True,
            terminating=False,
            age=POD_AGE,
        )
        for i in range(1, workers + 1)
    ]


class TimedCensus:
    """The operator's census (one control app per broker, kept between cycles), timed."""

    def __init__(self, url: str) -> None:
        self.app = remote.control_app(url, KeyScheme(), timeout=CENSUS_TIMEOUT)
        self.seconds: list[float] = []
        self.replies: list[int] = []

    def __call__(self, nodes: Sequence[str]) -> dict[str, Reply]:
        started = time.perf_counter()
        replies = remote.census(self.app, nodes, timeout=CENSUS_TIMEOUT)
        self.seconds.append(time.perf_counter() - started)
        self.replies.append(len(replies))
        return replies

    def close(self) -> None:
        self.app.close()


@contextmanager
def _workers(
    server: RedisServer, workers: int, workdir: Path, progress: Callable[[str], None]
) -> Iterator[list[CeleryProcess]]:
    """``workers`` demo-app workers started at once, all answering; every one stopped after."""
    started: list[CeleryProcess] = []
    try:
        for i in range(1, workers + 1):
            node = f"{POOL}@{pod_name(i)}"
            worker = start_celery(
                [
                    "worker", "-n", node, "-c", "1", "--pool", "solo", "-Q", "celery",
                    "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING",
                ],
                demo_env(server.url),
                workdir / f"w{i}.log",
            )  # fmt: skip
            worker.node = node
            started.append(worker)
        progress(f"waiting for {workers} workers to answer")
        app = remote.control_app(server.url, KeyScheme(), timeout=CENSUS_TIMEOUT)
        nodes = {w.node for w in started}

        def all_answer() -> bool:
            for worker in started:
                worker.assert_running()
            return nodes <= set(remote.census(app, sorted(nodes), timeout=CENSUS_TIMEOUT))

        try:
            wait_for(
                all_answer,
                timeout=60.0 + 3.0 * workers,
                interval=0.5,
                message=f"not all {workers} workers answered the census",
            )
        finally:
            app.close()
        yield started
    finally:
        _stop_all(started)


def _stop_all(workers: Sequence[CeleryProcess]) -> None:
    """Thaw (a frozen process cannot handle SIGTERM), then stop them all at once."""
    for worker in workers:
        with suppress(ProcessLookupError):
            os.kill(worker.proc.pid, signal.SIGCONT)
    if workers:
        with ThreadPoolExecutor(max_workers=min(len(workers), 16)) as pool:
            list(pool.map(lambda w: w.stop(timeout=15), workers))


def _measure_size(
    workers: int, cycles: int, workdir: Path, progress: Callable[[str], None]
) -> HungCost:
    with ExitStack() as stack:
        server = RedisServer(workdir / "redis")
        stack.callback(server.stop)
        server.start()
        broker = BrokerMonitor(server)  # before the workers: it must see their PSUBSCRIBE
        stack.callback(broker.stop)
        broker.start()
        overhead = measure(broker, lambda: None)[1].commands  # our INFO, CLIENT LIST, ECHOs
        progress(f"{workers} workers: starting")
        procs = stack.enter_context(_workers(server, workers, workdir, progress))
        census = TimedCensus(server.url)
        stack.callback(census.close)
        monitor = HealthMonitor(interval=INTERVAL)
        spec = cluster_spec(workers)
        pods = worker_pods(workers)
        restarted: list[str] = []

        def cycle() -> HealthReport:
            report = monitor.cycle(KEY, spec, census, pods, {POOL: 0}, {}, _now())
            restarted.extend(r.pod for r in report.restarts)
            return report

        cycle()  # untimed warm-up: connections, bytecode; every worker now has answered once
        progress(f"{workers} workers: {cycles} healthy cycles")
        first = len(census.seconds)
        windows = [measure(broker, cycle, overhead)[1] for _ in range(cycles)]
        census_seconds = tuple(census.seconds[first:])
        answering = tuple(census.replies[first:])
        healthy = combine(windows)
        idle_seconds = max(healthy.seconds, IDLE_WINDOW)
        progress(f"{workers} workers: idle window {idle_seconds:.1f}s")
        _, idle = measure(broker, lambda: time.sleep(idle_seconds), overhead)
        idle_rate = idle.commands / idle.seconds

        progress(f"{workers} workers: freezing {pod_name(STOPPED)}")
        detection = _detect(monitor, cycle, procs[STOPPED - 1])
        return HungCost(
            workers=workers,
            cycles=cycles,
            census_seconds=census_seconds,
            answering=answering,
            window_seconds=healthy.seconds,
            commands_total=healthy.commands,
            idle_commands=idle_rate * healthy.seconds,
            pidbox_publishes_total=healthy.pidbox_publishes,
            pidbox_subscribers=healthy.pidbox_subscribers,
            deliveries_total=healthy.deliveries,
            stopped_pod=pod_name(STOPPED),
            restarted_pods=tuple(restarted),
            detection_seconds=detection[0],
            detection_cycles=detection[1],
            silent_cycle_seconds=detection[2],
        )


def _detect(
    monitor: HealthMonitor, cycle: Callable[[], HealthReport], worker: CeleryProcess
) -> tuple[float, int, tuple[float, ...]]:
    """SIGSTOP the worker, run cycles whenever due, stop at the first that restarts its pod.

    Returns (seconds from the SIGSTOP to that decision, cycles run, each cycle's seconds).
    """
    pod = worker.node.partition("@")[2]
    os.kill(worker.proc.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    seconds: list[float] = []
    try:
        for _ in range(UNRESPONSIVE_CYCLES + SPARE_CYCLES):
            _wait_until_due(monitor)
            started = time.monotonic()
            report = cycle()
            seconds.append(time.monotonic() - started)
            if any(r.pod == pod for r in report.restarts):
                return time.monotonic() - frozen, len(seconds), tuple(seconds)
        raise RuntimeError(
            f"{pod} frozen for {len(seconds)} cycles and never restarted; last report: {report}"
        )
    finally:
        with suppress(ProcessLookupError):
            os.kill(worker.proc.pid, signal.SIGCONT)


def _wait_until_due(monitor: HealthMonitor) -> None:
    while not monitor.due(KEY, _now()):
        time.sleep(0.01)


def _now() -> datetime:
    return datetime.now(UTC)


def run_benchmark(
    sizes: Sequence[int], cycles: int, progress: Callable[[str], None] = lambda _: None
) -> list[HungCost]:
    """Measure each size on a fresh broker and fresh workers, one size after the other."""
    if not sizes or min(sizes) < 1 or cycles < 1:
        raise ValueError("sizes and cycles must be at least 1")
    costs = []
    for workers in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-hung-{workers}-") as tmp:
            costs.append(_measure_size(workers, cycles, Path(tmp), progress))
    return costs


def report(costs: Sequence[HungCost]) -> str:
    """The table and how to read it."""
    cores = os.cpu_count() or 0
    lines = [
        f"Hung-worker monitoring: demo-app workers (solo pool, one process each), "
        f"{costs[0].cycles} healthy cycles per size after 1 warm-up cycle",
        f"census timeout {CENSUS_TIMEOUT:g}s, monitor interval {INTERVAL:g}s, "
        f"unresponsiveCycles {UNRESPONSIVE_CYCLES}; machine: {cores} cores, "
        f"Python {sys.version.split()[0]}",
        "",
        f"{'workers':>7} {'census wall':>11} {'redis cmds':>10} {'pidbox':>9} {'deliveries':>10}"
        f" {'deliveries if':>15} {'detection to restart':>20}",
        f"{'':>7} {'s/cycle':>11} {'/cycle':>10} {'pub/cycle':>9} {'/cycle':>10}"
        f" {'one by one':>15} {'s (cycles)':>20}",
        f"{'':>7} {'':>11} {'':>10} {'':>9} {'':>10} {'(N^2, computed)':>15}",
    ]
    for cost in costs:
        detection = f"{cost.detection_seconds:.1f} ({cost.detection_cycles})"
        lines.append(
            f"{cost.workers:>7d} {cost.census_wall:>11.3f} {cost.redis_commands:>10.1f}"
            f" {cost.pidbox_publishes:>9.2f} {cost.deliveries:>10.2f}"
            f" {cost.deliveries_one_by_one:>15d} {detection:>20}"
        )
    lines += [
        "",
        "census wall: one healthy cycle's census (ping, stats, active; it returns when all N "
        "replied).",
        "redis cmds: INFO total_commands_processed over the cycle, less the idle workers' own "
        "traffic",
        "  (measured in an idle window) and ours (INFO, CLIENT LIST, ECHO markers).",
        f"pidbox pub: PUBLISH on {PIDBOX_CHANNEL} (MONITOR); deliveries: messages the broker "
        "pushes for",
        "  them = pub x the workers' PSUBSCRIBE. One by one: N targeted pings, each still "
        "delivered to",
        "  all N workers = N^2 per cycle (ping only; computed, not run).",
        f"detection: from SIGSTOP of {costs[0].stopped_pod} until a cycle decides its restart; "
        "cycles run back to back",
        f"  when due. With a silent worker the ping broadcast waits out the {CENSUS_TIMEOUT:g}s "
        "timeout (stats and active go to the answering workers only), so a cycle",
        "  takes about "
        + ", ".join(
            f"{statistics.fmean(c.silent_cycle_seconds):.1f}s (N={c.workers})" for c in costs
        )
        + ".",
    ]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from error
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be at least 1")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_hung",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes", type=parse_sizes, default=[1, 10, 50], help="worker counts (default 1,10,50)"
    )
    parser.add_argument("--cycles", type=int, default=5, help="healthy cycles per size (5)")
    options = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # clean up as on Ctrl-C
    try:
        costs = run_benchmark(options.sizes, options.cycles, _progress)
    except KeyboardInterrupt:
        _progress("interrupted: everything it started is stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report(costs))
    return 0


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
