"""The task-event memory benchmark on a few thousand events: every event reaches each consumer
(its RSS is reported at each quarter), which is what the figures rest on."""

from __future__ import annotations

from pathlib import Path

from tests.bench.bench_events import CONSUMERS, measure
from tests.integration.procs import RedisServer


def test_each_consumer_receives_every_event_and_reports_its_rss(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        for kind in CONSUMERS:
            ready, marks, seconds = measure(kind, server.url, 2000)
            assert [count for count, _ in marks] == [500, 1000, 1500, 2000], kind
            assert ready > 0
            assert all(rss > 0 for _, rss in marks)
            assert seconds > 0
    finally:
        server.stop()
