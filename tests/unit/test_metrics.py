"""The operator's metric names and labels: one prefix, few and bounded labels, no pod names."""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram

from celery_operator import metrics

ALL = [value for value in vars(metrics).values() if isinstance(value, Counter | Gauge | Histogram)]
ALLOWED_LABELS = {
    "namespace", "cluster", "pool", "queue", "task", "state", "verdict", "reason", "direction",
    "kind",
}  # fmt: skip


def test_every_metric_has_the_prefix_a_unit_suffix_where_due_and_help() -> None:
    assert len(ALL) >= 20
    for metric in ALL:
        name = metric._name
        assert re.fullmatch(r"celery_operator_[a-z_]+", name), name
        assert metric._documentation.strip(), name
        if isinstance(metric, Histogram):
            assert name.endswith("_seconds"), name


def test_labels_are_bounded_and_never_name_a_pod() -> None:
    for metric in ALL:
        labels = set(metric._labelnames)
        assert labels <= ALLOWED_LABELS, (metric._name, labels - ALLOWED_LABELS)
        assert {"namespace", "cluster"} <= labels, metric._name


def test_every_per_cluster_metric_is_forgotten_with_its_cluster() -> None:
    assert set(map(id, metrics.PER_CLUSTER)) == set(map(id, ALL))
    metrics.TASKS.labels("ns", "gone", "default", "app.add", "succeeded").inc()
    metrics.TASK_RUNTIME.labels("ns", "gone", "default", "app.add").observe(0.3)
    metrics.BEAT_UP.labels("ns", "gone").set(1)
    metrics.BEAT_UP.labels("ns", "stays").set(1)
    metrics.forget_cluster("ns", "gone")

    def series(metric: Counter | Gauge | Histogram, cluster: str) -> int:
        return sum(
            1
            for family in metric.collect()
            for sample in family.samples
            if sample.labels.get("cluster") == cluster
        )

    assert all(series(m, "gone") == 0 for m in ALL)
    assert series(metrics.BEAT_UP, "stays") == 1
