"""The operator's Prometheus metrics. Labels stay few and bounded: namespace, cluster, pool and a
verdict word; never a pod name (pods come and go, and each name would be a new series)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge

WORKER_RESTARTS: Final = Counter(
    "celery_operator_worker_restarts_total",
    "Hung workers restarted by deleting their pod, by verdict (Unresponsive, Stuck).",
    ["namespace", "cluster", "pool", "verdict"],
)
HUNG_WORKERS: Final = Gauge(
    "celery_operator_hung_workers",
    "Workers found hung in the last cycle, restarted or not, by verdict.",
    ["namespace", "cluster", "pool", "verdict"],
)
WORKERS_ANSWERING: Final = Gauge(
    "celery_operator_workers_answering",
    "Worker pods that answered the last hung-worker cycle's broadcasts.",
    ["namespace", "cluster", "pool"],
)
WORKERS_CHECKED: Final = Gauge(
    "celery_operator_workers_checked",
    "Running worker pods asked in the last hung-worker cycle.",
    ["namespace", "cluster", "pool"],
)
MONITOR_GUARD: Final = Gauge(
    "celery_operator_monitor_guard",
    "1 while hung-worker restarts are suspended for the named reason (BrokerUnreachable, "
    "MassUnresponsive), else 0.",
    ["namespace", "cluster", "reason"],
)
QUEUE_BACKLOG: Final = Gauge(
    "celery_operator_pool_backlog",
    "Messages waiting in a pool's queues, every priority list counted, at the last poll.",
    ["namespace", "cluster", "pool"],
)
TASKS_RUNNING: Final = Gauge(
    "celery_operator_pool_tasks_running",
    "Tasks a pool's workers were executing at the last answer (inspect active).",
    ["namespace", "cluster", "pool"],
)
TASKS_PREFETCHED: Final = Gauge(
    "celery_operator_pool_tasks_prefetched",
    "Tasks a pool's workers held prefetched, not yet started (inspect reserved).",
    ["namespace", "cluster", "pool"],
)
DESIRED_REPLICAS: Final = Gauge(
    "celery_operator_pool_desired_replicas",
    "Replicas the autoscaler wants for a pool.",
    ["namespace", "cluster", "pool"],
)
SCALING_DECISIONS: Final = Counter(
    "celery_operator_scaling_decisions_total",
    "Replica changes made by the autoscaler, by direction (up, down) and reason.",
    ["namespace", "cluster", "pool", "direction", "reason"],
)
