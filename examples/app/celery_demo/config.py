"""The demo app's Celery settings, read from the environment only (pure: no I/O).

The operator gives every container ``CELERY_BROKER_URL`` (from the user's Secret) and
``CELERY_BROKER_TRANSPORT_OPTIONS`` (JSON), so the app names its Redis keys exactly the way the
operator counts them (and, behind Sentinel, finds the master by the same ``master_name``).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any, Final

BEAT_TICK_TASK: Final = "celery_demo.tasks.beat_tick"
DEFAULT_BEAT_INTERVAL_SECONDS: Final = 10.0
AMQP_SCHEMES: Final = ("amqp", "amqps", "pyamqp")


def settings_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Celery settings (lowercase names) for the given environment.

    ``CELERY_BROKER_URL``: the broker; Celery also reads this variable by itself.
    ``CELERY_RESULT_BACKEND``: the result backend; defaults to the broker URL.
    ``CELERY_BROKER_TRANSPORT_OPTIONS``: kombu transport options as a JSON object
    (``global_keyprefix``, ``priority_steps``, ``sep``, ``visibility_timeout``, ...).
    ``CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS``: the same for the result backend; when unset, the
    result backend takes the broker's ``global_keyprefix`` (if any), so that every key the app
    writes carries the prefix.
    ``CELERY_BROKER_CA_FILE``: the CA bundle the operator mounts from ``caSecretRef``, with
    which a TLS broker (``rediss://``, ``amqps://``) is verified.
    ``CELERY_DEMO_BEAT_INTERVAL``: seconds between two ``beat_tick`` runs (float, default 10).

    On RabbitMQ the result backend defaults to ``rpc://`` (results as AMQP messages back to the
    caller): Celery has no ``amqp://`` result backend.
    """
    broker_url = environ.get("CELERY_BROKER_URL") or None
    scheme = (broker_url or "").partition("://")[0].lower()
    default_backend = "rpc://" if scheme in AMQP_SCHEMES else broker_url
    broker_options = _json_object(environ, "CELERY_BROKER_TRANSPORT_OPTIONS")
    if "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS" in environ:
        backend_options = _json_object(environ, "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS")
    else:
        prefix = broker_options.get("global_keyprefix") or ""
        backend_options = {"global_keyprefix": prefix} if prefix else {}
    settings: dict[str, Any] = {
        "broker_url": broker_url,
        "result_backend": environ.get("CELERY_RESULT_BACKEND") or default_backend,
        "broker_transport_options": broker_options,
        "result_backend_transport_options": backend_options,
        # Keep retrying the broker at startup too (the default changes in Celery 6): a pod that
        # starts before Redis is reachable waits for it instead of crash-looping.
        "broker_connection_retry_on_startup": True,
        # Acknowledge after the task ran, not before. Pods are killed routinely (scale-down, node
        # drain, OOM): with late acks a task whose worker died is redelivered (on Redis after the
        # visibility_timeout, default 1 h) instead of lost. The price is at-least-once execution,
        # so tasks must be idempotent; the demo tasks are (record counts re-runs to prove it).
        # Warm shutdown still finishes running tasks and acknowledges them before exiting.
        "task_acks_late": True,
        # Reserve one message per pool process: prefetched messages leave the queue lists, where
        # the operator counts the backlog, and would sit idle on a busy worker.
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_schedule": {
            "beat-tick": {
                "task": BEAT_TICK_TASK,
                "schedule": beat_interval_seconds(environ),
            },
        },
    }
    ca_file = environ.get("CELERY_BROKER_CA_FILE")
    if ca_file and scheme == "amqps":
        settings["broker_use_ssl"] = {"ca_certs": ca_file, "cert_reqs": ssl.CERT_REQUIRED}
    elif ca_file and scheme == "rediss":
        settings["broker_use_ssl"] = {"ssl_ca_certs": ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return settings


def beat_interval_seconds(environ: Mapping[str, str]) -> float:
    """``CELERY_DEMO_BEAT_INTERVAL`` as a positive number of seconds."""
    raw = environ.get("CELERY_DEMO_BEAT_INTERVAL", "")
    if not raw:
        return DEFAULT_BEAT_INTERVAL_SECONDS
    interval = float(raw)
    if not interval > 0:
        raise ValueError(f"CELERY_DEMO_BEAT_INTERVAL must be a positive number, got {raw!r}")
    return interval


def global_keyprefix(environ: Mapping[str, str]) -> str:
    """The broker's ``global_keyprefix`` (empty when none is set)."""
    return str(_json_object(environ, "CELERY_BROKER_TRANSPORT_OPTIONS").get("global_keyprefix", ""))


def _json_object(environ: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = environ.get(name, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"{name} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value
