"""RabbitMQ for the end-to-end tests: one real server per module, a virtual host per test, and a
log of every task run that the tests count.

The server is the integration tier's :class:`tests.integration.rabbitmq.RabbitServer` (Debian's
``rabbitmq-server`` 3.10 with its management plugin) on the host's 127.0.0.1, which the local
cluster's hostNetwork pods reach as the test process does. It takes about 5 s to start, so a
module shares one; each test gets a virtual host of its own (named after its namespace), so no
queue, pidbox or event exchange of one test is seen by the next.

Run records: the demo app's ``record`` tasks count runs in the *broker's* Redis, which a
RabbitMQ broker does not have, and its results default to ``rpc://`` there. The workers get the
test's Redis as result backend instead, and the tests count runs from what it stores: it
publishes every state it stores on the task's key, and with ``task_track_started`` (the demo
app's) a task that runs stores STARTED first. A task run twice (redelivered after its worker
died mid-run) is STARTED twice; a lost one never SUCCESS. :class:`RunLog` subscribes before the
tasks are sent and keeps every publication.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import threading
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import pytest
import redis

from tests.e2e.harness import Clusters, demo_spec
from tests.e2e.kube import wait_for
from tests.integration.rabbitmq import RabbitServer

RESULT_KEY_PREFIX: Final = "celery-task-meta-"
"""Celery's Redis result backend key (and publish channel) of a task: prefix + task id."""
BROKER_SECRET: Final = "broker"
API_SECRET: Final = "rabbit-api"


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitServer]:
    """One RabbitMQ node for the module, stopped (by PID) with its epmd afterwards."""
    server = RabbitServer(tmp_path_factory.mktemp("rabbitmq"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@dataclass(frozen=True)
class Vhost:
    """A test's virtual host on the module's server, and its URLs."""

    server: RabbitServer
    name: str

    @property
    def url(self) -> str:
        """The broker URL, for the pods (in Secret ``broker``) and for the test's client."""
        return self.server.amqp_url(self.name)

    def queues(self) -> dict[str, tuple[int, int, int]]:
        """(ready, unacknowledged, consumers) by queue, as ``rabbitmqctl list_queues`` says."""
        return self.server.list_queues(self.name)


@pytest.fixture
def vhost(rabbit: RabbitServer, namespace: str) -> Iterator[Vhost]:
    """A fresh virtual host named after the test's namespace, with the test user's permissions;
    deleted afterwards (with every queue in it)."""
    if not rabbit.running:  # a test that failed mid-outage left it down: the next one needs it
        rabbit.start()
    _management(rabbit, "PUT", f"/api/vhosts/{quote(namespace, safe='')}")
    _management(
        rabbit,
        "PUT",
        f"/api/permissions/{quote(namespace, safe='')}/{quote(rabbit.username, safe='')}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )
    yield Vhost(rabbit, namespace)
    if not rabbit.running:
        rabbit.start()
    _management(rabbit, "DELETE", f"/api/vhosts/{quote(namespace, safe='')}")


def _management(server: RabbitServer, method: str, path: str, body: object = None) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.management_port, timeout=10)
    login = b64encode(":".join(server.credentials).encode()).decode()
    headers = {"Authorization": f"Basic {login}", "Content-Type": "application/json"}
    try:
        connection.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    assert response.status in (200, 201, 204), f"{method} {path}: {response.status} {answer!r}"


def rabbit_spec(
    clusters: Clusters,
    vhost: Vhost,
    redis_url: str,
    image: str,
    host_network: bool,
    *,
    management_api: bool,
    **pool: Any,
) -> dict[str, Any]:
    """The demo spec on RabbitMQ (Secret ``broker``), results in ``redis_url``'s Redis, and with
    ``management_api`` the management API with the test user's login (Secret ``rabbit-api``);
    keywords change workers[0]. Puts the Secrets: call it once per namespace."""
    clusters.put_secret(BROKER_SECRET, {"url": vhost.url})
    spec = demo_spec(image, host_network, **pool)
    # Not the demo app's rpc:// on RabbitMQ: RunLog counts runs from what a Redis backend stores.
    spec["env"].append({"name": "CELERY_RESULT_BACKEND", "value": redis_url})
    spec["broker"] = {"urlSecretRef": {"name": BROKER_SECRET, "key": "url"}}
    if management_api:
        username, password = vhost.server.credentials
        clusters.put_secret(API_SECRET, {"username": username, "password": password})
        spec["broker"]["managementApi"] = {
            "url": vhost.server.management_url,
            "credentialsSecretRef": {
                "name": API_SECRET,
                "usernameKey": "username",
                "passwordKey": "password",
            },
        }
    return spec


@dataclass(frozen=True)
class Stored:
    """One state the result backend stored for a task."""

    task_id: str
    status: str
    hostname: str
    """The worker's node name (``<pool>@<pod>``) of a STARTED state; empty for the others."""


class RunLog:
    """Every task state the Redis result backend at ``redis_url`` stores from now on."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._lock = threading.Lock()
        self._stored: list[Stored] = []
        self._pubsub.psubscribe(**{f"{RESULT_KEY_PREFIX}*": self._on_message})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.05, daemon=True)
        wait_for(
            lambda: int(self._client.execute_command("PUBSUB", "NUMPAT")) >= 1,
            timeout=10,
            message="the run log never subscribed",
        )

    def _on_message(self, message: dict[str, Any]) -> None:
        meta = json.loads(message["data"])
        result = meta.get("result")
        hostname = result.get("hostname", "") if isinstance(result, dict) else ""
        with self._lock:
            self._stored.append(Stored(meta["task_id"], meta["status"], str(hostname)))

    def stored(self) -> list[Stored]:
        assert self._thread.is_alive(), "the run log's subscription died"
        with self._lock:
            return list(self._stored)

    def starts(self) -> collections.Counter[str]:
        """How many times each task started (ran)."""
        return collections.Counter(s.task_id for s in self.stored() if s.status == "STARTED")

    def succeeded(self) -> set[str]:
        return {s.task_id for s in self.stored() if s.status == "SUCCESS"}

    def hosts(self, task_ids: set[str]) -> dict[str, str]:
        """The worker each of ``task_ids`` last started on (``<pool>@<pod>``)."""
        return {
            s.task_id: s.hostname
            for s in self.stored()
            if s.status == "STARTED" and s.task_id in task_ids
        }

    def close(self) -> None:
        self._thread.stop()
        self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):
            self._pubsub.close()
        self._client.close()


@pytest.fixture
def run_log(redis_url: str) -> Iterator[RunLog]:
    log = RunLog(redis_url)
    yield log
    log.close()


def exactly_once(log: RunLog, task_ids: list[str]) -> dict[str, str]:
    """What is wrong with the runs of ``task_ids`` (empty when each started once and succeeded),
    by task id."""
    starts = log.starts()
    succeeded = log.succeeded()
    wrong = {}
    for task_id in task_ids:
        if starts[task_id] != 1:
            wrong[task_id] = f"started {starts[task_id]} times"
        elif task_id not in succeeded:
            wrong[task_id] = "never succeeded"
    return wrong
