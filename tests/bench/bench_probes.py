"""What a probe costs: our ``celery-probe`` checks against ``celery inspect ping``, same workers.

    .venv/bin/python -m tests.bench.bench_probes [--workers 3] [--runs 20] [--min-ratio X]

It starts a private ``redis-server`` and N demo-app workers through ``celery-probe run``, then runs
each probe R times as a subprocess, as the kubelet would (in rounds, one of each probe per round),
and measures:

* per run, the child's CPU seconds (user + system, from ``wait4``) and wall time;
* on the broker, the commands each probe causes (``INFO stats``, net of what the idle workers send
  anyway, measured in an idle window as long as the longest probe's) and the commands sent on the
  probe's own connections (``MONITOR``);
* the broadcasts: ``PUBLISH`` on the pidbox channel, and how many subscribers each one reaches.
  ``inspect ping -d w1@bench`` still goes to every worker: each receives and decodes it, and all
  but one drop it. A cluster of N workers probed every P seconds pays N^2/P decodes a second.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from itertools import count
from pathlib import Path
from types import FrameType
from typing import Any, Final, NamedTuple, TypeVar

import redis

from tests.integration.procs import (
    CeleryProcess,
    RedisServer,
    client_app,
    demo_env,
    start_celery,
    wait_for,
    wait_until_pinged,
)

PIDBOX_CHANNEL: Final = "/0.celery.pidbox"
"""Where ``celery inspect`` broadcasts: kombu's fanout prefix ``/<db>.`` and Celery's mailbox
exchange. Workers subscribe to it with PSUBSCRIBE, so ``PUBSUB NUMSUB`` (exact subscriptions only)
says 0; the subscribers are counted from their PSUBSCRIBE in the MONITOR stream instead."""
PING = "inspect ping"
OURS: Final = ("worker-live", "worker-ready")
PROBE_TIMEOUT: Final = 60.0
READY_TIMEOUT: Final = 30.0
MARK: Final = "bench-probes:"
"""Prefix of the ECHO commands that delimit windows in the MONITOR stream."""

T = TypeVar("T")


@dataclass(frozen=True)
class ProbeCost:
    """What one probe costs, measured over ``runs`` runs against ``workers`` workers.

    Totals are kept as counted (integers where the broker counts), per-probe figures derive from
    them, so deterministic facts can be asserted exactly.
    """

    name: str
    command: tuple[str, ...]
    workers: int
    runs: int
    cpu_seconds: tuple[float, ...]
    wall_seconds: tuple[float, ...]
    window_seconds: float
    commands_total: int
    """Commands the broker ran during the window (``INFO stats``), without the benchmark's own."""
    idle_commands: float
    """Commands the idle workers would have sent anyway in a window this long."""
    own_commands_total: int
    """Commands sent on connections the probe process opened (from ``MONITOR``)."""
    pidbox_publishes_total: int
    pidbox_subscribers: int
    """Subscriptions a PUBLISH on the pidbox channel reaches (one per worker)."""
    deliveries_total: int
    """Messages the broker pushed to subscribers for those publishes (what PUBLISH returns)."""

    @property
    def cpu_mean(self) -> float:
        return statistics.fmean(self.cpu_seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_seconds)

    @property
    def wall_mean(self) -> float:
        return statistics.fmean(self.wall_seconds)

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall_seconds)

    @property
    def redis_commands(self) -> float:
        """Broker commands per probe, net of the idle workers' background traffic."""
        return (self.commands_total - self.idle_commands) / self.runs

    @property
    def own_commands(self) -> float:
        return self.own_commands_total / self.runs

    @property
    def pidbox_publishes(self) -> float:
        return self.pidbox_publishes_total / self.runs

    @property
    def deliveries(self) -> float:
        return self.deliveries_total / self.runs


# --- the broker, seen through MONITOR ------------------------------------------------------------


class Event(NamedTuple):
    """One command the broker ran: who sent it ("ip:port", or "lua" inside a script), what."""

    client: str
    name: str
    args: tuple[str, ...]
    """Only what the analysis needs: channels, patterns, markers."""


_SUBSCRIBE: Final = frozenset({"SUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE"})
Subscriptions = dict[str, set[tuple[bool, str]]]
"""Client -> its subscriptions, as (is a pattern, channel or pattern)."""


def parse_event(raw: Mapping[str, Any]) -> Event:
    """An ``Event`` from what redis-py's ``Monitor.next_command`` returns."""
    words = str(raw["command"]).split(" ")
    name = words[0].upper()
    if raw.get("client_type") == "lua":
        client = "lua"
    else:
        client = f"{raw['client_address']}:{raw['client_port']}"
    if name in _SUBSCRIBE or name == "ECHO":
        args = tuple(words[1:])
    elif name == "PUBLISH":
        args = tuple(words[1:2])
    else:
        args = ()
    return Event(client, name, args)


def apply_subscription(subs: Subscriptions, event: Event) -> None:
    """Update ``subs`` with a (P)(UN)SUBSCRIBE or RESET; other commands change nothing."""
    if event.name in ("SUBSCRIBE", "PSUBSCRIBE"):
        pattern = event.name == "PSUBSCRIBE"
        subs.setdefault(event.client, set()).update((pattern, arg) for arg in event.args)
    elif event.name in ("UNSUBSCRIBE", "PUNSUBSCRIBE"):
        pattern = event.name == "PUNSUBSCRIBE"
        current = subs.get(event.client, set())
        if event.args:
            current -= {(pattern, arg) for arg in event.args}
        else:
            current -= {sub for sub in current if sub[0] is pattern}
    elif event.name == "RESET":
        subs.pop(event.client, None)


def receivers(subs: Subscriptions, channel: str) -> int:
    """Messages a PUBLISH on ``channel`` delivers: one per matching subscription, as Redis counts
    (its glob patterns match like ``fnmatchcase`` for the patterns Celery uses)."""
    return sum(
        1
        for client_subs in subs.values()
        for pattern, name in client_subs
        if (fnmatch.fnmatchcase(channel, name) if pattern else channel == name)
    )


class BrokerMonitor:
    """Every command the broker runs, in order, read from a MONITOR connection by a thread.

    Started before the workers, so it sees their PSUBSCRIBE. Windows are delimited by ECHO markers
    sent on ``control``: MONITOR shows them in order with everything else, so attributing a command
    to a window needs no clock.
    """

    def __init__(self, server: RedisServer) -> None:
        self.control = server.client()
        self._monitor = server.client().monitor()
        self._events: list[Event] = []
        self._marks: dict[str, int] = {}
        self._error: Exception | None = None
        self._seen = threading.Condition()
        self._ids = count()
        self._thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)

    def start(self) -> None:
        self._monitor.__enter__()  # MONITOR is on once this returns
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            # When the broker is gone, so is the connection: the thread has ended already.
            with suppress(redis.RedisError, RuntimeError):
                self.mark("stop")
            self._thread.join(timeout=5)
        self._monitor.__exit__(None, None, None)
        self.control.close()

    def mark(self, label: str) -> int:
        """Send a marker and return how many commands the broker ran before it."""
        marker = f"{MARK}{label}:{next(self._ids)}"
        self.control.echo(marker)
        with self._seen:
            self._seen.wait_for(lambda: marker in self._marks or self._error is not None, 10.0)
            if marker not in self._marks:
                raise RuntimeError(f"MONITOR never showed {marker!r}") from self._error
            return self._marks[marker]

    def events(self) -> list[Event]:
        with self._seen:
            return list(self._events)

    def _read(self) -> None:
        try:
            while True:
                event = parse_event(self._monitor.next_command())
                with self._seen:
                    if event.name == "ECHO" and event.args and event.args[0].startswith(MARK):
                        self._marks[event.args[0]] = len(self._events)
                        self._seen.notify_all()
                        if event.args[0].startswith(f"{MARK}stop:"):
                            return
                    else:
                        self._events.append(event)
        except Exception as error:  # reported by the next mark()
            with self._seen:
                self._error = error
                self._seen.notify_all()


@dataclass(frozen=True)
class Window:
    """What the broker did while something ran."""

    seconds: float
    commands: int
    own_commands: int
    pidbox_publishes: int
    deliveries: int
    pidbox_subscribers: int


def measure(monitor: BrokerMonitor, body: Callable[[], T], overhead: int = 0) -> tuple[T, Window]:
    """Run ``body``; return its result and what the broker did meanwhile.

    ``overhead`` is the number of commands this function itself sends between its two ``INFO``
    readings (calibrated on an empty broker). A command counts as the probe's own when it comes
    from a connection that did not exist when the window opened. The window's seconds are those
    between the two readings: the time the command count covers.
    """
    control = monitor.control
    started = time.perf_counter()
    before = _commands_processed(control)
    existing = {str(client["addr"]) for client in control.client_list()}
    start = monitor.mark("start")
    result = body()
    end = monitor.mark("end")
    after = _commands_processed(control)
    seconds = time.perf_counter() - started

    events = monitor.events()
    subs: Subscriptions = {}
    for event in events[:start]:
        apply_subscription(subs, event)
    subs = {client: s for client, s in subs.items() if client in existing}
    subscribers = receivers(subs, PIDBOX_CHANNEL)
    own = publishes = deliveries = 0
    for event in events[start:end]:
        if event.client != "lua" and event.client not in existing:
            own += 1
        if event.name == "PUBLISH" and event.args and "pidbox" in event.args[0]:
            publishes += 1
            deliveries += receivers(subs, event.args[0])
        apply_subscription(subs, event)
    window = Window(seconds, after - before - overhead, own, publishes, deliveries, subscribers)
    return result, window


def combine(windows: Sequence[Window]) -> Window:
    """The sum of several windows; the fewest subscribers any of them saw."""
    return Window(
        seconds=sum(w.seconds for w in windows),
        commands=sum(w.commands for w in windows),
        own_commands=sum(w.own_commands for w in windows),
        pidbox_publishes=sum(w.pidbox_publishes for w in windows),
        deliveries=sum(w.deliveries for w in windows),
        pidbox_subscribers=min(w.pidbox_subscribers for w in windows),
    )


def _commands_processed(client: redis.Redis[bytes]) -> int:
    return int(client.info("stats")["total_commands_processed"])


# --- the probes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    name: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    passing: str
    """A substring of the output of a passing run: a failing probe's figures would mean nothing."""


class Run(NamedTuple):
    cpu: float
    wall: float


def run_probe(probe: Probe, cwd: Path) -> Run:
    """Run the probe once as a child process; its CPU seconds come from ``wait4``, exactly."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        probe.command,
        env=dict(probe.env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    watchdog = threading.Timer(PROBE_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        output = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        watchdog.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or probe.passing not in output:
        raise RuntimeError(f"{probe.name} failed (exit {proc.returncode}): {output.strip()}")
    return Run(usage.ru_utime + usage.ru_stime, wall)


def _script(name: str) -> str:
    """A console script of this virtualenv (next to its python), as the image would have it."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise RuntimeError(f"{path} not found: install the project into this virtualenv")
    return str(path)


# --- the benchmark --------------------------------------------------------------------------------


@contextmanager
def _cluster(
    workers: int, workdir: Path, progress: Callable[[str], None]
) -> Iterator[tuple[RedisServer, BrokerMonitor, int, list[Path]]]:
    """Redis, its monitor and ``workers`` ready workers; everything stopped on the way out."""
    with ExitStack() as stack:
        server = RedisServer(workdir / "redis")
        stack.callback(server.stop)
        server.start()
        monitor = BrokerMonitor(server)
        stack.callback(monitor.stop)
        monitor.start()
        overhead = measure(monitor, lambda: None)[1].commands  # our INFO, CLIENT LIST, ECHOs
        progress(f"starting {workers} workers")
        started: list[CeleryProcess] = []
        state_dirs: list[Path] = []
        for k in range(1, workers + 1):
            state_dir = workdir / f"probe-w{k}"
            node = f"w{k}@bench"
            worker = start_celery(
                ["worker", "-n", node, "-c", "1", "--loglevel=INFO"],
                demo_env(server.url, {"CELERY_PROBE_DIR": str(state_dir)}),
                workdir / f"w{k}.log",
                probes=True,
            )
            worker.node = node
            stack.callback(worker.stop)
            started.append(worker)
            state_dirs.append(state_dir)
        app = client_app(server.url)
        try:
            for worker, state_dir in zip(started, state_dirs, strict=True):
                wait_until_pinged(worker, app)
                wait_for(
                    partial(_ready, state_dir),
                    timeout=READY_TIMEOUT,
                    interval=0.2,
                    message=f"{worker.node}: worker-ready never passed:\n{worker.log_tail()}",
                )
        finally:
            app.close()
        yield server, monitor, overhead, state_dirs


def _ready(state_dir: Path) -> bool:
    result = subprocess.run(
        [_script("celery-probe"), "worker-ready", "--dir", str(state_dir)],
        capture_output=True,
        timeout=PROBE_TIMEOUT,
        check=False,
    )
    return result.returncode == 0


def run_benchmark(
    workers: int, runs: int, progress: Callable[[str], None] = lambda _: None
) -> dict[str, ProbeCost]:
    """Measure every probe ``runs`` times on one set of ``workers`` workers, by probe name.

    Each probe gets one untimed warm-up run (page cache, bytecode). Then the runs go in rounds,
    one of each probe per round, so that whatever drifts on the machine meanwhile (the workers
    settling, a busy neighbour, the CPU's clock) affects every probe alike; each run has a broker
    window of its own. Last, an idle window as long as the longest probe's windows together
    measures the workers' own background traffic.
    """
    if workers < 1 or runs < 1:
        raise ValueError("workers and runs must be at least 1")
    with (
        tempfile.TemporaryDirectory(prefix="bench-probes-") as tmp,
        _cluster(workers, Path(tmp), progress) as (server, monitor, overhead, state_dirs),
    ):
        workdir = Path(tmp)
        env = demo_env(server.url, {"CELERY_PROBE_DIR": str(state_dirs[0])})
        probe = _script("celery-probe")
        first = str(state_dirs[0])
        probes = [
            Probe("worker-live", (probe, "worker-live", "--dir", first), env, "ok: main loop"),
            Probe("worker-ready", (probe, "worker-ready", "--dir", first), env, "ok: consuming"),
            Probe(
                PING,
                (_script("celery"), "-A", "celery_demo", "inspect", "ping", "-d", "w1@bench"),
                demo_env(server.url),
                "pong",
            ),
        ]
        for p in probes:
            run_probe(p, workdir)
        progress(f"{runs} rounds of {len(probes)} probes")
        rounds: dict[str, list[tuple[Run, Window]]] = {p.name: [] for p in probes}
        for _ in range(runs):
            for p in probes:
                rounds[p.name].append(measure(monitor, partial(run_probe, p, workdir), overhead))
        measured = [
            (p, [run for run, _ in rounds[p.name]], combine([w for _, w in rounds[p.name]]))
            for p in probes
        ]
        longest = max(window.seconds for _, _, window in measured)
        progress(f"idle window: {longest:.1f}s")
        _, idle = measure(monitor, partial(time.sleep, longest), overhead)
        idle_rate = idle.commands / idle.seconds
        return {
            p.name: ProbeCost(
                name=p.name,
                command=p.command,
                workers=workers,
                runs=runs,
                cpu_seconds=tuple(r.cpu for r in results),
                wall_seconds=tuple(r.wall for r in results),
                window_seconds=window.seconds,
                commands_total=window.commands,
                idle_commands=idle_rate * window.seconds,
                own_commands_total=window.own_commands,
                pidbox_publishes_total=window.pidbox_publishes,
                pidbox_subscribers=window.pidbox_subscribers,
                deliveries_total=window.deliveries,
            )
            for p, results, window in measured
        }


# --- the report -----------------------------------------------------------------------------------


def cpu_ratios(costs: Mapping[str, ProbeCost]) -> dict[str, tuple[float, float]]:
    """For each of our checks: baseline CPU / its CPU, (of the means, of the medians)."""
    ping = costs[PING]
    return {
        name: (ping.cpu_mean / costs[name].cpu_mean, ping.cpu_median / costs[name].cpu_median)
        for name in OURS
        if name in costs
    }


def report(costs: Mapping[str, ProbeCost]) -> str:
    """The table, the ratios and how to read them."""
    any_cost = next(iter(costs.values()))
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0))
    lines = [
        f"Probe cost: {any_cost.workers} workers (demo app, prefork -c 1, started through "
        f"celery-probe run), {any_cost.runs} runs per probe (interleaved) after 1 warm-up run",
        f"machine: {cores} cores ({usable} usable by this process), Python "
        f"{sys.version.split()[0]}",
        "",
        f"{'probe':<13} {'CPU s/probe':>17} {'wall s/probe':>17} {'redis cmds/probe':>17}"
        f" {'pidbox':>9} {'pidbox':>7} {'deliveries':>10}",
        f"{'':<13} {'mean':>8} {'median':>8} {'mean':>8} {'median':>8} {'net':>8} {'own':>8}"
        f" {'pub/probe':>9} {'subs':>7} {'/probe':>10}",
    ]
    for cost in costs.values():
        lines.append(
            f"{cost.name:<13} {cost.cpu_mean:>8.4f} {cost.cpu_median:>8.4f}"
            f" {cost.wall_mean:>8.4f} {cost.wall_median:>8.4f}"
            f" {cost.redis_commands:>8.1f} {cost.own_commands:>8.1f}"
            f" {cost.pidbox_publishes:>9.2f} {cost.pidbox_subscribers:>7d} {cost.deliveries:>10.2f}"
        )
    lines.append("")
    ping = costs.get(PING)
    for name, (mean, median) in cpu_ratios(costs).items():
        lines.append(f"{PING} CPU / {name} CPU = {mean:.1f}x (medians: {median:.1f}x)")
    if ping is not None:
        for name in OURS:
            if name in costs:
                ratio = ping.wall_mean / costs[name].wall_mean
                lines.append(f"{PING} wall / {name} wall = {ratio:.1f}x")
    idle_rate = any_cost.idle_commands / any_cost.window_seconds
    lines += [
        "",
        "CPU: user+sys of the probe process and its children (wait4); wall: fork until reaped.",
        "redis cmds/probe, net: INFO total_commands_processed over the probe's window, less",
        f"  what the idle workers send anyway ({idle_rate:.1f} cmds/s, in an idle window as long",
        "  as the longest probe's windows); own: sent on the probe's own connections (MONITOR).",
        f"pidbox pub: PUBLISH on {PIDBOX_CHANNEL}; subs: the workers' PSUBSCRIBE to it (PUBSUB",
        "  NUMSUB counts SUBSCRIBE only, and says 0); deliveries: messages the broker pushes for",
        "  those publishes = pub x subs: with -d every worker still receives and decodes the ping.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_probes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=3, help="workers to start (default 3)")
    parser.add_argument("--runs", type=int, default=20, help="runs per probe (default 20)")
    parser.add_argument(
        "--min-ratio",
        type=float,
        help="exit 1 when inspect ping's CPU per probe is less than this many times ours",
    )
    options = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # clean up as on Ctrl-C
    try:
        costs = run_benchmark(options.workers, options.runs, _progress)
    except KeyboardInterrupt:
        _progress("interrupted: everything it started is stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report(costs))
    if options.min_ratio is not None:
        worst = min(mean for mean, _ in cpu_ratios(costs).values())
        if worst < options.min_ratio:
            print(f"FAIL: CPU ratio {worst:.1f}x is below --min-ratio {options.min_ratio:g}x")
            return 1
        print(f"ok: CPU ratio {worst:.1f}x >= --min-ratio {options.min_ratio:g}x")
    return 0


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
