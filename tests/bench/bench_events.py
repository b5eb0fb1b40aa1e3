"""Memory of the task metrics: RSS of a consumer of 100,000 real task events, ours against the
state Flower keeps (``celery.events.state.State``), both fed through a real Redis.

    .venv/bin/python -m tests.bench.bench_events [--events 100000]

A private ``redis-server``; for each consumer a process of its own that receives the cluster's
events as the operator does (``celery.events.Receiver``); this process publishes the events with
Celery's own ``EventDispatcher``: for each task ``task-received``, ``task-started`` and
``task-succeeded`` (one in ten never finishes, as a lost worker's tasks would not), twenty task
names, from five workers. Each consumer reports its RSS when it is ready (nothing received yet)
and after every quarter of the events; the growth is what the events cost.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from celery import Celery
from celery.events.state import State

from celery_operator.eventstream import BrokerEvents
from celery_operator.queues import KeyScheme
from celery_operator.remote import control_app
from tests.integration.procs import RedisServer

CONSUMERS: Final = {
    "ours": "celery-operator (TaskEvents, bounded)",
    "state": "celery.events.State (Flower's; 10,000 tasks kept)",
}
NAMES: Final = 20
WORKERS: Final = 5


def rss_kib() -> int:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def consume(kind: str, url: str, expected: int) -> None:
    """Run in a child process: receive events, report RSS at each quarter of ``expected``."""
    marks = {expected * q // 4 for q in (1, 2, 3, 4)}
    seen = {"tasks": 0}
    done = threading.Event()

    def after(event: Mapping[str, Any]) -> None:
        if not str(event.get("type", "")).startswith("task-"):
            return
        seen["tasks"] += 1
        if seen["tasks"] in marks:
            print(f"rss {seen['tasks']} {rss_kib()}", flush=True)
            if seen["tasks"] == expected:
                done.set()

    app = control_app(url, KeyScheme(), timeout=2.0)
    if kind == "ours":
        stream = BrokerEvents(app, "bench")
        key = ("bench", "events")
        stream.claim(key, [f"default@bench-pod-{i}" for i in range(WORKERS)] + ["default@probe"])
        fold = stream._handle

        def handle(event: Mapping[str, Any]) -> None:
            fold(event)
            after(event)

        stream._handle = handle  # type: ignore[method-assign]
        stream.subscribe(key, {"celery": "default"})
        stop: Callable[[], None] = stream.stop
    else:
        state = State()

        def handle(event: Mapping[str, Any]) -> None:
            state.event(dict(event))
            after(event)

        def run() -> None:
            with app.connection_for_read() as connection:
                receiver = app.events.Receiver(connection, handlers={"*": handle})
                receiver.capture(limit=None, timeout=None, wakeup=False)

        threading.Thread(target=run, daemon=True).start()

        def stop() -> None:
            return None

    print(f"ready {rss_kib()}", flush=True)
    done.wait(timeout=600)
    stop()


def publish(app: Celery, events: int) -> float:
    """Publish ``events`` task events; returns the seconds it took."""
    started = time.monotonic()
    with app.connection_for_write() as connection:
        dispatchers = [
            app.events.Dispatcher(connection, hostname=f"default@bench-pod-{i}", enabled=True)
            for i in range(WORKERS)
        ]
        sent = 0
        task = 0
        while sent < events:
            dispatcher = dispatchers[task % WORKERS]
            task_id = str(uuid.uuid4())
            name = f"app.task{task % NAMES}"
            kinds = ["task-received", "task-started"]
            if task % 10:
                kinds.append("task-succeeded")
            for kind in kinds[: events - sent]:
                extra: dict[str, Any] = {"name": name} if kind == "task-received" else {}
                if kind == "task-succeeded":
                    extra["runtime"] = 0.01 * (task % 50)
                dispatcher.send(kind, uuid=task_id, **extra)
                sent += 1
            task += 1
    return time.monotonic() - started


def heartbeat_until_ready(app: Celery, child: subprocess.Popen[str]) -> int:
    """Heartbeats until the child has its receiver bound and says so; its RSS then."""
    assert child.stdout is not None
    first = child.stdout.readline().split()
    assert first[0] == "ready", first
    ready_rss = int(first[1])
    with app.connection_for_write() as connection:
        dispatcher = app.events.Dispatcher(connection, hostname="default@probe", enabled=True)
        for _ in range(10):  # the receiver binds its queue once capture runs
            dispatcher.send("worker-heartbeat", freq=2.0)
            time.sleep(0.3)
    return ready_rss


def measure(kind: str, url: str, events: int) -> tuple[int, list[tuple[int, int]], float]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_events", "--consume", kind, "--url", url,
         "--events", str(events)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    app = Celery("bench-producer", broker=url, set_as_current=False)
    try:
        ready = heartbeat_until_ready(app, child)
        seconds = publish(app, events)
        assert child.stdout is not None
        marks = []
        for line in child.stdout:
            _, count, rss = line.split()
            marks.append((int(count), int(rss)))
            if int(count) == events:
                break
    finally:
        child.terminate()
        child.wait(timeout=30)
        app.close()
    return ready, marks, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--consume", choices=sorted(CONSUMERS))
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.consume:
        consume(args.consume, args.url, args.events)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            results = {kind: measure(kind, server.url, args.events) for kind in CONSUMERS}
        finally:
            server.stop()
    print(f"\ntask-event memory: {args.events:,} events through Redis, {NAMES} task names")
    growth: dict[str, int] = {}
    for kind, (ready, marks, seconds) in results.items():
        steps = ", ".join(f"{count:,}: {rss / 1024:.1f}" for count, rss in marks)
        growth[kind] = marks[-1][1] - ready
        print(
            f"{CONSUMERS[kind]:<52} RSS ready {ready / 1024:.1f} MiB; after {steps} MiB; "
            f"growth {growth[kind] / 1024:.1f} MiB (published in {seconds:.1f} s)"
        )
    if growth["ours"] > 0:
        print(f"ratio (State growth / ours): {growth['state'] / growth['ours']:.1f}x")


if __name__ == "__main__":
    main()
