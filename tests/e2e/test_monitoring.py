"""A real Prometheus (Debian's package) scrapes the operator while it runs a CeleryCluster on the
real cluster: PromQL returns the queue backlog with every priority list and key prefix counted,
and the task counts from Celery's events; the live endpoint passes ``promtool check metrics``.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from celery import Celery
from kopf.testing import KopfRunner

from tests.e2e.harness import TASKS, Clusters, _free_port
from tests.e2e.kube import wait_for

PREFIX = "mon:"
STEPS = [0, 3, 6, 9]
HELD = 7
"""Tasks sent, with priorities, to a queue whose pool has no replicas: they stay waiting."""


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def query(self, promql: str) -> float | None:
        """The single value of an instant query; None when it returns nothing."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        results = body["data"]["result"]
        return float(results[0]["value"][1]) if results else None

    def target_up(self) -> bool:
        return self.query('up{job="celery-operator"}') == 1.0


@pytest.fixture
def metrics_port() -> Iterator[int]:
    """The operator's /metrics, as it serves it in production (the registry of this process,
    where the operator under test runs)."""
    port = _free_port()
    server, thread = prometheus_client.start_http_server(port, addr="127.0.0.1")
    yield port
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def prometheus(metrics_port: int, tmp_path: Path) -> Iterator[Prometheus]:
    """``prometheus`` scraping the operator every second, with its own storage."""
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "celery-operator",
                "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = Prometheus(port)
    try:
        wait_for(lambda: _answers(server), timeout=30, message="Prometheus never started")
        wait_for(server.target_up, timeout=30, message="Prometheus never scraped the operator")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _answers(server: Prometheus) -> bool:
    try:
        server.query("vector(1)")
    except OSError:
        return False
    return True


def test_prometheus_sees_the_backlog_with_priorities_and_the_task_counts(
    operator: KopfRunner,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
    redis_url: str,
    prometheus: Prometheus,
    metrics_port: int,
) -> None:
    spec = sample_spec(concurrency=2)
    spec["broker"]["transportOptions"] = {"globalKeyprefix": PREFIX, "prioritySteps": STEPS}
    spec["workers"].append({"name": "held", "queues": ["held"], "replicas": 0})
    clusters.create("mon", spec)
    clusters.wait_phase("mon", "Available")

    app = Celery("e2e-producer", broker=redis_url, backend=redis_url, set_as_current=False)
    options = {"global_keyprefix": PREFIX, "priority_steps": STEPS}
    app.conf.update(broker_transport_options=options, result_backend_transport_options=options)
    for priority in range(HELD):
        app.send_task(f"{TASKS}.add", args=(1, 1), queue="held", priority=priority)
    adds = [app.send_task(f"{TASKS}.add", args=(i, i), queue="celery") for i in range(5)]
    fails = [app.send_task(f"{TASKS}.fail", args=("on purpose",), queue="celery") for _ in "ab"]
    for result in adds:
        result.get(timeout=60)
    for result in fails:
        result.get(timeout=60, propagate=False)
    app.close()

    where = f'namespace="{clusters.namespace}",cluster="mon"'
    checks = {
        f'celery_operator_queue_backlog{{{where},queue="held"}}': float(HELD),
        f'celery_operator_queue_backlog{{{where},queue="celery"}}': 0.0,
        f'sum(celery_operator_tasks_total{{{where},task="{TASKS}.add",state="succeeded"}})': 5.0,
        f'sum(celery_operator_tasks_total{{{where},task="{TASKS}.fail",state="failed"}})': 2.0,
        f'sum(celery_operator_task_runtime_seconds_count{{{where},task="{TASKS}.add"}})': 5.0,
        f'celery_operator_workers_online{{{where},pool="default"}}': 1.0,
        f'celery_operator_pool_replicas{{{where},pool="default",kind="ready"}}': 1.0,
        f"celery_operator_broker_reachable{{{where}}}": 1.0,
        f"celery_operator_beat_up{{{where}}}": 1.0,
        # Beat announced a tick (through the prefixed broker) within the last half minute.
        f"time() - celery_operator_beat_last_tick_timestamp_seconds{{{where}}} < bool 30": 1.0,
    }

    def all_seen() -> bool:
        return all(prometheus.query(q) == want for q, want in checks.items())

    try:
        wait_for(all_seen, timeout=60, message="Prometheus never showed the expected values")
    except AssertionError:
        got = {q: prometheus.query(q) for q in checks}
        raise AssertionError(f"expected {checks}, Prometheus has {got}") from None
    # The held messages age (the operator first saw them some reconciles ago).
    age = f'celery_operator_queue_oldest_message_age_seconds{{{where},queue="held"}}'
    wait_for(lambda: (prometheus.query(age) or 0.0) > 0, timeout=30, message="no age")

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        scraped = r.read().decode()
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=scraped, capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
