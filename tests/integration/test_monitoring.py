"""What deploy/monitoring ships, checked with Prometheus' own tool (promtool, Debian's package):
the alert rules load and each fires on its series and not on the other, the operator's live
/metrics endpoint passes ``promtool check metrics``, and the dashboard and rules only name
metrics the operator exports."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from celery_operator import metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
ALERT_TESTS = ROOT / "tests" / "monitoring" / "alerts_test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, text=True, check=False
    )


def _exported() -> set[str]:
    names: set[str] = set()
    for metric in vars(metrics).values():
        if isinstance(metric, Counter):
            names.add(f"{metric._name}_total")
        elif isinstance(metric, Histogram):
            names |= {f"{metric._name}_{s}" for s in ("bucket", "sum", "count")}
        elif isinstance(metric, Gauge):
            names.add(metric._name)
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(celery_operator_[a-z_]+)", expr))


def test_the_alert_rules_load() -> None:
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_each_alert_fires_on_its_series_and_not_on_the_other() -> None:
    result = _promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    # Every alert has a check where it fires; a check that expects silence may come beside it
    # (the same series before they turn bad).
    fired = {t["alertname"] for c in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
             for t in c["alert_rule_test"] if t["exp_alerts"]}  # fmt: skip
    assert fired == {rule["alert"] for rule in rules}
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        series = {s["series"].split("{")[0] for s in case["input_series"]}
        for check in case["alert_rule_test"]:
            if not check["exp_alerts"]:
                continue
            # Some input series must belong to none of the alerts expected: the ones that must
            # not fire (a series belongs to an alert when it carries all of the alert's labels).
            alerts = [
                {k: v for k, v in a["exp_labels"].items() if k != "severity"}
                for a in check["exp_alerts"]
            ]
            quiet = [
                s["series"]
                for s in case["input_series"]
                if not any(all(f'{k}="{v}"' in s["series"] for k, v in a.items()) for a in alerts)
            ]
            assert quiet, check["alertname"]
        assert series


def test_the_prometheus_rule_carries_the_same_groups() -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_rules_and_dashboard_name_only_exported_metrics() -> None:
    exported = _exported()
    for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]:
        assert _metric_names(rule["expr"]) <= exported, rule["alert"]
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'namespace="$namespace"' in target["expr"], panel["title"]
            used |= _metric_names(target["expr"])
    assert used <= exported, used - exported
    variables = [v["name"] for v in dashboard["templating"]["list"]]
    assert variables == ["datasource", "namespace", "cluster", "pool"]


def test_a_live_scrape_passes_promtool_check_metrics() -> None:
    for metric in metrics.PER_CLUSTER:  # one series of each, as a busy operator would have
        child = metric.labels(*("check" for _ in metric._labelnames))
        if isinstance(metric, Histogram):
            child.observe(0.3)  # type: ignore[union-attr]
        elif isinstance(metric, Gauge):
            child.set(2)  # type: ignore[union-attr]
        else:
            child.inc()  # type: ignore[union-attr]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server, thread = prometheus_client.start_http_server(port, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            scraped = response.read().decode()
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert "celery_operator_tasks_total{" in scraped
    result = _promtool("check", "metrics", stdin=scraped)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics.forget_cluster("check", "check")


@pytest.mark.parametrize("path", sorted(MONITORING.glob("*.yaml")), ids=lambda p: p.name)
def test_every_monitoring_manifest_is_valid_yaml(path: Path) -> None:
    assert list(yaml.safe_load_all(path.read_text()))
