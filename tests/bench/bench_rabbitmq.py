"""What reading a RabbitMQ broker's backlog costs, per poll, the ways the adapter can.

    .venv/bin/python -m tests.bench.bench_rabbitmq [--queues 50] [--polls 50]

It starts a private RabbitMQ (:class:`tests.integration.rabbitmq.RabbitServer`, timing its first
boot and a restart), declares N classic queues with a few messages each, and reads all of them
P times each way:

* ``management``: :func:`celery_operator.rabbitmq.read_management`, one HTTP request (a new
  connection each poll, as the adapter does) without statistics;
* ``management, statistics``: the same listing from the statistics database (no
  ``disable_stats``), the alternative the adapter does not use;
* ``amqp``: :func:`celery_operator.rabbitmq.read_amqp`, one connection and N passive declares.

Per poll: wall time (median and 95th percentile), this process's CPU, and the node's CPU (its
``beam.smp``, from /proc, net of what it burns idle over the same time).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from base64 import b64encode
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from kombu.connection import Connection

from celery_operator import rabbitmq
from celery_operator.rabbitmq import QUEUE_COLUMNS, ManagementApi
from tests.integration.procs import HOST
from tests.integration.rabbitmq import RabbitServer

MESSAGES_PER_QUEUE: Final = 3
IDLE_WINDOW_SECONDS: Final = 3.0


def node_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def declare_queues(server: RabbitServer, names: Sequence[str]) -> None:
    connection: Any = Connection(server.amqp_url())  # type: ignore[no-untyped-call]
    try:
        channel = connection.channel()
        for name in names:
            channel.queue_declare(queue=name, durable=True, auto_delete=False)
            for _ in range(MESSAGES_PER_QUEUE):
                channel.basic_publish(channel.prepare_message(b"x"), exchange="", routing_key=name)
    finally:
        connection.release()


def statistics_listing(server: RabbitServer) -> Callable[[], object]:
    """One ``GET /api/queues/%2F`` from the statistics database, with the same columns."""
    login = b64encode(f"{server.username}:{server.password}".encode()).decode()
    path = f"/api/queues/%2F?columns={','.join(QUEUE_COLUMNS)}"

    def read() -> object:
        connection = http.client.HTTPConnection(HOST, server.management_port, timeout=5)
        try:
            connection.request("GET", path, headers={"Authorization": f"Basic {login}"})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == 200, body
        return json.loads(body)  # parsed, as the adapter's answer is

    return read


def measure(label: str, read: Callable[[], object], polls: int, node: int, idle: float) -> None:
    read()  # warm: the first poll pays for imports and the first TLS/AMQP setup
    walls: list[float] = []
    cpu, node_cpu, started = time.process_time(), node_cpu_seconds(node), time.monotonic()
    for _ in range(polls):
        begin = time.perf_counter()
        read()
        walls.append(time.perf_counter() - begin)
    elapsed = time.monotonic() - started
    client = (time.process_time() - cpu) / polls
    server = max(0.0, node_cpu_seconds(node) - node_cpu - idle * elapsed) / polls
    p95 = statistics.quantiles(walls, n=20)[-1] if len(walls) >= 20 else max(walls)
    print(
        f"{label:28s} wall {statistics.median(walls) * 1000:7.2f} ms (p95 {p95 * 1000:6.2f})"
        f"  client CPU {client * 1000:6.2f} ms  node CPU {server * 1000:6.2f} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", type=int, default=50)
    parser.add_argument("--polls", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-rabbitmq-") as workdir:
        server = RabbitServer(Path(workdir))
        try:
            server.start()
            first_boot = server.start_seconds
            server.stop()
            server.start()
            print(f"RabbitServer start: first boot {first_boot:.1f} s, restart "
                  f"{server.start_seconds:.1f} s")  # fmt: skip
            names = [f"bench-{i:04d}" for i in range(args.queues)]
            declare_queues(server, names)
            node = server.node_pid
            before = node_cpu_seconds(node)
            time.sleep(IDLE_WINDOW_SECONDS)
            idle = (node_cpu_seconds(node) - before) / IDLE_WINDOW_SECONDS
            print(f"{args.queues} queues, {args.polls} polls each; node idle CPU "
                  f"{idle * 1000:.1f} ms/s (subtracted)")  # fmt: skip
            api = ManagementApi(server.management_url, server.username, server.password)
            loads = rabbitmq.read_management(api, "/", names, timeout=5)
            assert {load.waiting for load in loads.values()} == {MESSAGES_PER_QUEUE}, loads
            url = server.amqp_url()
            measure(
                "management (adapter)",
                lambda: rabbitmq.read_management(api, "/", names, timeout=5),
                args.polls,
                node,
                idle,
            )
            measure("management, statistics", statistics_listing(server), args.polls, node, idle)
            measure(
                f"amqp, {args.queues} passive declares",
                lambda: rabbitmq.read_amqp(url, names, timeout=5),
                args.polls,
                node,
                idle,
            )
        finally:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
