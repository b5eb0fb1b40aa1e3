"""The operator's Prometheus metrics. Labels stay few and bounded: namespace, cluster, pool and a
verdict word; never a pod name (pods come and go, and each name would be a new series)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

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
MAX_REPLICAS: Final = Gauge(
    "celery_operator_pool_max_replicas",
    "An autoscaled pool's maxReplicas (alerts compare the desired replicas with it).",
    ["namespace", "cluster", "pool"],
)
SCALING_DECISIONS: Final = Counter(
    "celery_operator_scaling_decisions_total",
    "Replica changes made by the autoscaler, by direction (up, down) and reason.",
    ["namespace", "cluster", "pool", "direction", "reason"],
)

# --- from Celery events (eventstream.py): by pool and task name, never by pod ---------------
TASKS: Final = Counter(
    "celery_operator_tasks_total",
    "Task events seen, by pool, task name and state (sent, received, started, succeeded, "
    "failed, retried, revoked, rejected). Names past the per-cluster limit count as 'other'.",
    ["namespace", "cluster", "pool", "task", "state"],
)
TASK_RUNTIME: Final = Histogram(
    "celery_operator_task_runtime_seconds",
    "Runtime of succeeded tasks, as the worker measured it (task-succeeded runtime).",
    ["namespace", "cluster", "pool", "task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
TASK_WAIT: Final = Histogram(
    "celery_operator_task_queue_wait_seconds",
    "From task-sent (else task-received) to task-started: how long a task waited for a slot.",
    ["namespace", "cluster", "pool", "task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
WORKERS_ONLINE: Final = Gauge(
    "celery_operator_workers_online",
    "Workers whose heartbeat event is recent (twice its frequency plus 2 s), by pool.",
    ["namespace", "cluster", "pool"],
)

# --- from each reconcile -------------------------------------------------------------------
QUEUE_MESSAGES: Final = Gauge(
    "celery_operator_queue_backlog",
    "Messages waiting in a queue, every priority list counted, at the last reconcile.",
    ["namespace", "cluster", "queue"],
)
QUEUE_UNACKED: Final = Gauge(
    "celery_operator_queue_unacked",
    "Messages of a queue delivered to workers and not yet acknowledged (prefetched, and "
    "running with late acks), at the last reconcile; RabbitMQ with its management API only.",
    ["namespace", "cluster", "queue"],
)
BROKER_INFO: Final = Gauge(
    "celery_operator_broker_info",
    "1, labelled with the kind of the cluster's broker (redis, redis-sentinel, rabbitmq).",
    ["namespace", "cluster", "kind"],
)
QUEUE_OLDEST_AGE: Final = Gauge(
    "celery_operator_queue_oldest_message_age_seconds",
    "How long the oldest message of a queue has waited, at least: measured from when the "
    "operator first saw it at the head of the queue (as fine as the reconcile interval); 0 "
    "when the queue is empty.",
    ["namespace", "cluster", "queue"],
)
POOL_REPLICAS: Final = Gauge(
    "celery_operator_pool_replicas",
    "A pool's worker pods: desired (what the operator asks for), current (that exist), ready.",
    ["namespace", "cluster", "pool", "kind"],
)
BEAT_UP: Final = Gauge(
    "celery_operator_beat_up",
    "1 while the beat pod is ready (its probe checks that the scheduler ticks), else 0; "
    "absent when beat is disabled.",
    ["namespace", "cluster"],
)
BEAT_LAST_TICK: Final = Gauge(
    "celery_operator_beat_last_tick_timestamp_seconds",
    "When beat's scheduler last ticked (Unix time, beat's clock), as beat run through "
    "celery-probe announces it on a Redis broker at most every 5 s.",
    ["namespace", "cluster"],
)
BROKER_REACHABLE: Final = Gauge(
    "celery_operator_broker_reachable",
    "1 when the last reconcile could read the broker, else 0.",
    ["namespace", "cluster"],
)
RECONCILE_SECONDS: Final = Histogram(
    "celery_operator_reconcile_duration_seconds",
    "Wall time of one reconcile of one cluster.",
    ["namespace", "cluster"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS: Final = Counter(
    "celery_operator_reconcile_errors_total",
    "Reconciles (and autoscaler polls) of a cluster that failed with an error and were retried.",
    ["namespace", "cluster"],
)


PER_CLUSTER: Final[tuple[Counter | Gauge | Histogram, ...]] = (
    WORKER_RESTARTS, HUNG_WORKERS, WORKERS_ANSWERING, WORKERS_CHECKED, MONITOR_GUARD,
    QUEUE_BACKLOG, TASKS_RUNNING, TASKS_PREFETCHED, DESIRED_REPLICAS, MAX_REPLICAS,
    SCALING_DECISIONS,
    TASKS, TASK_RUNTIME, TASK_WAIT, WORKERS_ONLINE,
    QUEUE_MESSAGES, QUEUE_UNACKED, BROKER_INFO, QUEUE_OLDEST_AGE, POOL_REPLICAS, BEAT_UP,
    BEAT_LAST_TICK, BROKER_REACHABLE,
    RECONCILE_SECONDS, RECONCILE_ERRORS,
)  # fmt: skip
"""Every metric labelled by namespace and cluster."""


def forget_cluster(namespace: str, cluster: str) -> None:
    """Drop every series of a deleted cluster, so that it stops being exported."""
    for metric in PER_CLUSTER:
        names: tuple[str, ...] = metric._labelnames  # prometheus_client has no public accessor
        series = {
            tuple(sample.labels[n] for n in names)
            for family in metric.collect()
            for sample in family.samples
            if sample.labels.get("namespace") == namespace
            and sample.labels.get("cluster") == cluster
        }
        for values in series:
            metric.remove(*values)
