"""``celery_operator.rabbitmq`` against a real RabbitMQ 3.10 and real demo-app workers, and what
the operator's census and event receiver need from Celery on RabbitMQ.

The reference for every count is ``rabbitmqctl list_queues name messages_ready
messages_unacknowledged consumers`` on the test node, as Celery's monitoring guide reads them.
Counts move while a worker takes tasks, so each comparison waits for one instant at which ours
and rabbitmqctl's agree: our read, rabbitmqctl's, our read again, all equal.

One server serves the whole module (about 5 s to start); every test uses queues of its own.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from celery import Celery

from celery_operator import rabbitmq
from celery_operator.broker import BrokerUnavailable
from celery_operator.brokers import Backlog, Broker, BrokerKey
from celery_operator.queues import KeyScheme
from celery_operator.rabbitmq import AMQP, MANAGEMENT, ManagementApi, QueueLoad
from celery_operator.remote import census, control_app, tasks_in_hand
from tests.integration.procs import CeleryProcess, free_port, wait_for, wait_until_pinged
from tests.integration.rabbitmq import (
    MONITOR_USER,
    TEST_VHOST,
    RabbitServer,
    client_settings,
    kill_worker,
    start_worker,
    write_app_module,
)

SLEEP_TASK: Final = "celery_demo.tasks.sleep"
LONG: Final = 300.0
"""Seconds a held task sleeps: longer than any test, so what a worker holds stays put."""
SENT: Final = 10
TIMEOUT: Final = 2.0


@dataclass(frozen=True)
class Kind:
    """A kind of queue, the Celery settings that make it, and what a worker with one pool slot
    and a prefetch multiplier of 4 leaves of SENT long tasks: (ready, unacknowledged)."""

    settings: Mapping[str, object]
    queue_type: str
    arguments: Mapping[str, object]
    counts: tuple[int, int]


# Late acks (the demo app's): the worker holds 4 unacknowledged messages, the running one among
# them, and 6 stay ready.
KINDS: Final[Mapping[str, Kind]] = {
    "plain": Kind({}, "classic", {}, (6, 4)),
    # Celery declares every queue with x-max-priority; kombu sends with the message priority.
    "priority": Kind(
        {"task_queue_max_priority": 10, "task_default_priority": 5},
        "classic",
        {"x-max-priority": 10},
        (6, 4),
    ),
    # Celery 5.5+: the default queue is declared as a quorum queue; the worker sees it
    # (worker_detect_quorum_queues, on by default) and turns global QoS off.
    "quorum": Kind(
        {"task_default_queue_type": "quorum"}, "quorum", {"x-queue-type": "quorum"}, (6, 4)
    ),
    # Celery's default, early acks: the running task is acknowledged when it starts and leaves
    # the queue's counts; 4 more are prefetched. Unacked counts only prefetched tasks then.
    "early acks": Kind({"task_acks_late": False}, "classic", {}, (5, 4)),
}


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitServer]:
    server = RabbitServer(tmp_path_factory.mktemp("rabbitmq"), tls=True)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_app_module(tmp_path_factory.mktemp("app"))


@pytest.fixture
def api(rabbit: RabbitServer) -> ManagementApi:
    return ManagementApi(rabbit.management_url, rabbit.username, rabbit.password)


WorkerStarter = Callable[..., CeleryProcess]


@pytest.fixture
def worker(rabbit: RabbitServer, app_dir: Path, tmp_path: Path) -> Iterator[WorkerStarter]:
    """Starts a demo worker on the test server with Celery ``settings`` and waits for its ping;
    every worker is killed at teardown (tasks sleep for minutes: no warm shutdown)."""
    started: list[CeleryProcess] = []
    pinger = producer(rabbit.amqp_url())

    def start(*args: str, name: str, settings: Mapping[str, object] = {}) -> CeleryProcess:
        node = f"{name}@integration"
        process = start_worker(
            rabbit.amqp_url(), app_dir, node, tmp_path / f"{name}.log", *args, settings=settings
        )
        started.append(process)
        wait_until_pinged(process, pinger)
        return process

    yield start
    for process in started:
        kill_worker(process)
    pinger.close()


def producer(url: str, settings: Mapping[str, object] = {}) -> Celery:
    """A separate producer app, as a user's web service would be, with no result backend."""
    app = Celery("rabbit-client", broker=url, backend="disabled", set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, **client_settings(settings))
    return app


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


Row = tuple[int, int, int]
"""rabbitmqctl's (ready, unacknowledged, consumers) of a queue."""


def agreeing(
    ours: Callable[[], QueueLoad], theirs: Callable[[], Row | None], expected: tuple[int, int]
) -> Callable[[], tuple[QueueLoad, Row] | None]:
    """A wait_for condition: our load and rabbitmqctl's row, once both say ``expected``
    (waiting, in flight) and ours did not move across rabbitmqctl's read: one instant."""

    def condition() -> tuple[QueueLoad, Row] | None:
        before = ours()
        row = theirs()
        after = ours()
        if row is None or before != after:
            return None
        return (after, row) if (after.waiting, after.in_flight) == row[:2] == expected else None

    return condition


# --- counts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KINDS))
def test_counts_equal_rabbitmqctl_while_a_worker_holds_prefetched_tasks(
    rabbit: RabbitServer, api: ManagementApi, worker: WorkerStarter, name: str
) -> None:
    kind = KINDS[name]
    queue = unique(name.replace(" ", "-"))
    settings = {"task_default_queue": queue, **kind.settings}
    held = worker(
        "-Q", queue, "-c", "1", "--prefetch-multiplier", "4", "-P", "prefork",
        name=queue, settings=settings,
    )  # fmt: skip
    app = producer(rabbit.amqp_url(), settings)
    for i in range(SENT):
        app.send_task(SLEEP_TASK, args=[LONG], queue=queue, priority=i % 10)
    app.close()

    load, row = wait_for(
        agreeing(
            lambda: rabbitmq.read_management(api, "/", [queue], timeout=TIMEOUT)[queue],
            lambda: rabbit.list_queues("/").get(queue),
            expected=kind.counts,
        ),
        timeout=30,
        interval=0.2,
        message=f"{name}: our counts and rabbitmqctl's never agreed on {kind.counts} "
        f"({rabbit.list_queues('/').get(queue)}):\n{held.log_tail()}",
    )
    ready, unacked = kind.counts
    assert load == QueueLoad(waiting=ready, in_flight=unacked, consumers=None, source=MANAGEMENT)
    assert row == (ready, unacked, 1)
    # The fallback sees the same ready messages and the consumer, and says it cannot see the
    # unacknowledged ones.
    assert rabbitmq.read_amqp(rabbit.amqp_url(), [queue], timeout=TIMEOUT) == {
        queue: QueueLoad(waiting=ready, in_flight=None, consumers=1, source=AMQP)
    }
    # What Celery declared is what the kind says.
    rows = rabbit.queue_info("name", "type", "arguments", "durable")
    declared = next(r for r in rows if r["name"] == queue)
    assert (declared["type"], declared["durable"]) == (kind.queue_type, True)
    arguments = {key: value for key, _, value in declared["arguments"]}  # (name, type, value)
    assert arguments == kind.arguments
    if kind.queue_type == "quorum":
        assert "Global QoS is disabled" in held.log_tail(400)


def test_priority_messages_are_counted_once_without_a_worker(
    rabbit: RabbitServer, api: ManagementApi
) -> None:
    queue = unique("prio-idle")
    settings = {"task_default_queue": queue, "task_queue_max_priority": 10}
    app = producer(rabbit.amqp_url(), settings)
    for i in range(SENT):
        app.send_task(SLEEP_TASK, args=[0], queue=queue, priority=i % 10)
    app.close()
    load, row = wait_for(
        agreeing(
            lambda: rabbitmq.read_management(api, "/", [queue], timeout=TIMEOUT)[queue],
            lambda: rabbit.list_queues("/").get(queue),
            expected=(SENT, 0),
        ),
        timeout=15,
        message=f"the priority queue never counted {SENT}: {rabbit.list_queues('/').get(queue)}",
    )
    assert load == QueueLoad(SENT, 0, None, MANAGEMENT)
    assert row == (SENT, 0, 0)


def test_a_vhost_with_a_slash_and_missing_queues(rabbit: RabbitServer, api: ManagementApi) -> None:
    queue = unique("in-vhost")
    url = rabbit.amqp_url(TEST_VHOST)
    app = producer(url, {"task_default_queue": queue})
    for _ in range(3):
        app.send_task(SLEEP_TASK, args=[0], queue=queue)
    app.close()
    wanted = [queue, "never-declared"]
    _, row = wait_for(  # publishing is asynchronous: the messages reach the queue soon after
        agreeing(
            lambda: rabbitmq.read_management(api, TEST_VHOST, wanted, timeout=TIMEOUT)[queue],
            lambda: rabbit.list_queues(TEST_VHOST).get(queue),
            expected=(3, 0),
        ),
        timeout=15,
        message=f"never 3 messages in {queue}: {rabbit.list_queues(TEST_VHOST).get(queue)}",
    )
    assert row == (3, 0, 0)
    assert rabbitmq.read_management(api, TEST_VHOST, wanted, timeout=TIMEOUT) == {
        queue: QueueLoad(3, 0, None, MANAGEMENT),
        "never-declared": QueueLoad(0, 0, 0, MANAGEMENT),
    }
    assert queue not in rabbit.list_queues("/")  # the other vhost's queue of that name
    assert rabbitmq.read_management(api, "/", [queue], timeout=TIMEOUT) == {
        queue: QueueLoad(0, 0, 0, MANAGEMENT)
    }
    # The fallback declares passively on one connection: a missing queue closes its channel
    # (404), and the queues after it are still read.
    assert rabbitmq.read_amqp(url, ["never-declared", queue, "nor-this"], timeout=TIMEOUT) == {
        "never-declared": QueueLoad(0, None, 0, AMQP),
        queue: QueueLoad(3, None, 0, AMQP),
        "nor-this": QueueLoad(0, None, 0, AMQP),
    }


def test_the_fallback_reads_the_first_host_of_a_failover_list_that_answers(
    rabbit: RabbitServer,
) -> None:
    good = rabbit.amqp_url()
    dead = good.replace(f":{rabbit.amqp_port}/", f":{free_port()}/")
    started = time.monotonic()
    assert rabbitmq.read_amqp(f"{dead};{good}", ["nothing"], timeout=TIMEOUT) == {
        "nothing": QueueLoad(0, None, 0, AMQP)
    }
    assert time.monotonic() - started < TIMEOUT  # no sleep between the hosts


def test_a_user_without_access_to_the_vhost_is_refused_not_counted_as_empty(
    rabbit: RabbitServer,
) -> None:
    monitor = ManagementApi(rabbit.management_url, MONITOR_USER, rabbit.monitor_password)
    with pytest.raises(BrokerUnavailable, match="User not authorised to access virtual host"):
        rabbitmq.read_management(monitor, "/", ["celery"], timeout=TIMEOUT)
    wrong = ManagementApi(rabbit.management_url, rabbit.username, "not-" + rabbit.password)
    with pytest.raises(BrokerUnavailable, match="refused the login") as raised:
        rabbitmq.read_management(wrong, "/", ["celery"], timeout=TIMEOUT)
    assert rabbit.password not in str(raised.value)


def test_tls_with_the_ca_and_without_it(rabbit: RabbitServer) -> None:
    assert rabbit.tls is not None
    ca = str(rabbit.tls.ca_file)
    secure = ManagementApi(rabbit.management_tls_url, rabbit.username, rabbit.password, ca)
    assert rabbitmq.read_management(secure, "/", ["celery"], timeout=TIMEOUT) == {
        "celery": QueueLoad(0, 0, 0, MANAGEMENT)
    }
    assert rabbitmq.read_amqp(rabbit.amqp_url(tls=True), ["x"], timeout=TIMEOUT, ca_file=ca) == {
        "x": QueueLoad(0, None, 0, AMQP)
    }
    system_cas = ManagementApi(rabbit.management_tls_url, rabbit.username, rabbit.password)
    with pytest.raises(BrokerUnavailable, match="certificate verify failed"):
        rabbitmq.read_management(system_cas, "/", ["celery"], timeout=TIMEOUT)
    with pytest.raises(BrokerUnavailable, match="certificate verify failed") as raised:
        rabbitmq.read_amqp(rabbit.amqp_url(tls=True), ["x"], timeout=TIMEOUT)
    assert rabbit.password not in str(raised.value)


# --- what the census and the event receiver need ---------------------------------------------


def test_remote_control_reaches_a_worker_on_rabbitmq(
    rabbit: RabbitServer, worker: WorkerStarter
) -> None:
    queue = unique("control")
    held = worker(
        "-Q", queue, "-c", "1", "--prefetch-multiplier", "4", "-P", "prefork", name="control"
    )  # fmt: skip
    app = producer(rabbit.amqp_url())
    for _ in range(5):
        app.send_task(SLEEP_TASK, args=[LONG], queue=queue)
    inspect = app.control.inspect(destination=[held.node], timeout=TIMEOUT)
    assert inspect.ping() == {held.node: {"ok": "pong"}}

    def holding() -> tuple[Any, Any] | None:
        active, reserved = inspect.active() or {}, inspect.reserved() or {}
        counts = (len(active.get(held.node, [])), len(reserved.get(held.node, [])))
        return (active, reserved) if counts == (1, 3) else None

    active, reserved = wait_for(holding, timeout=30, message="never 1 running + 3 reserved")
    assert {t["name"] for t in active[held.node] + reserved[held.node]} == {SLEEP_TASK}
    # The operator's own calls, with its control app, over the same broker.
    control = control_app(rabbit.amqp_url(), KeyScheme(), timeout=TIMEOUT)
    replies = census(control, [held.node, "ghost@integration"], timeout=TIMEOUT)
    assert list(replies) == [held.node]
    assert replies[held.node].slots == 1
    assert replies[held.node].active == frozenset(t["id"] for t in active[held.node])
    assert tasks_in_hand(control, [held.node], timeout=TIMEOUT) == {held.node: (1, 3)}
    # Celery 5.7 declares its pidbox queues (the worker's and the callers' reply queues)
    # transient and exclusive (control_queue_exclusive, on by default): RabbitMQ 4.x refuses
    # only transient queues that are *not* exclusive, so remote control needs no
    # control_queue_durable there with these defaults.
    pidboxes = {
        q["name"]: (q["durable"], q["exclusive"], q["auto_delete"])
        for q in rabbit.queue_info("name", "durable", "exclusive", "auto_delete")
        if q["name"].endswith(".pidbox")
    }
    assert f"{held.node}.celery.pidbox" in pidboxes
    assert set(pidboxes.values()) == {(False, True, True)}, pidboxes
    control.close()
    app.close()


def test_celery_events_arrive_from_a_worker_on_rabbitmq(
    rabbit: RabbitServer, worker: WorkerStarter
) -> None:
    queue = unique("events")
    sender = worker("-Q", queue, "-c", "1", "-P", "prefork", name="events")
    app = producer(rabbit.amqp_url())
    app.conf.task_send_sent_event = True
    events: list[dict[str, Any]] = []
    connection = app.connection_for_read()
    receiver = app.events.Receiver(connection, handlers={"*": events.append}, app=app)
    # wakeup: the workers send a heartbeat as soon as the receiver's queue is bound.
    thread = threading.Thread(
        target=receiver.capture, kwargs={"limit": None, "timeout": None, "wakeup": True}
    )
    thread.start()
    try:
        wait_for(
            lambda: any(e.get("hostname") == sender.node for e in list(events)),
            timeout=15,
            message=f"no event from {sender.node} after the receiver's wakeup",
        )
        app.send_task(SLEEP_TASK, args=[0.1], queue=queue)

        def seen() -> set[str] | None:
            types = {e["type"] for e in list(events) if e.get("hostname") == sender.node}
            return types if {"task-received", "task-started", "task-succeeded"} <= types else None

        types = wait_for(seen, timeout=30, message=f"no task events from {sender.node}: {events}")
        assert "worker-heartbeat" in types or "worker-online" in types
        assert any(e["type"] == "task-sent" and e.get("queue") == queue for e in list(events))
        event_queues = [
            q
            for q in rabbit.queue_info("name", "durable", "exclusive", "auto_delete")
            if q["name"].startswith("celeryev.")
        ]
        # Transient and exclusive too (event_queue_exclusive, on by default): fine on 4.x.
        assert event_queues
        assert {(q["durable"], q["exclusive"], q["auto_delete"]) for q in event_queues} == {
            (False, True, True)
        }
    finally:
        receiver.should_stop = True
        thread.join(timeout=10)
        connection.release()
        app.close()


# --- the operator's shared broker on RabbitMQ ----------------------------------------------------


def _connections(rabbit: RabbitServer, user: str) -> int:
    rows = json.loads(rabbit.ctl("list_connections", "--formatter", "json", "user"))
    return sum(1 for row in rows if row.get("user") == user)


def test_the_shared_broker_counts_polls_asks_and_hears_workers_on_rabbitmq(
    rabbit: RabbitServer, api: ManagementApi, worker: WorkerStarter
) -> None:
    """What the operator holds per broker, on RabbitMQ: the poll's waiting and unacked counts
    (as rabbitmqctl's), the census and the tasks in hand addressed to the cluster's worker, its
    events; and nothing left connected once the broker is closed."""
    queue = unique("shared")
    held = worker(
        "-Q", queue, "-c", "1", "--prefetch-multiplier", "4", "-P", "prefork", "-E",
        name=queue, settings={"task_default_queue": queue},
    )  # fmt: skip
    before = _connections(rabbit, rabbit.username)
    shared = Broker(
        BrokerKey.of(rabbit.amqp_url(), KeyScheme(), management=api),
        timeout=TIMEOUT,
        census_timeout=TIMEOUT,
    )
    cluster = ("ns", "rabbit")
    try:
        assert (shared.kind, shared.name) == ("rabbitmq", f"amqp://127.0.0.1:{rabbit.amqp_port}//")
        assert "management API" in shared.counting
        shared.subscribe_events(cluster, {queue: "default"})
        shared.claim_nodes(cluster, [held.node])
        woken = threading.Event()
        shared.watch(cluster, [queue], 0.2, woken.set)
        app = producer(rabbit.amqp_url())
        for _ in range(SENT):
            app.send_task(SLEEP_TASK, args=[LONG], queue=queue)
        app.close()

        def polled() -> Backlog | None:
            reading = shared.backlog()
            if reading is None or reading.counts is None or reading.in_flight is None:
                return None
            return reading if (reading.counts[queue], reading.in_flight[queue]) == (6, 4) else None

        wait_for(
            polled,
            timeout=30,
            message=f"the poll never saw 6 ready + 4 unacked: {shared.backlog()}",
        )
        assert woken.is_set()
        assert rabbit.list_queues("/")[queue] == (6, 4, 1)
        load = shared.read_loads([queue])[queue]
        assert (load.waiting, load.in_flight) == (6, 4)
        replies = shared.census([held.node, "ghost@integration"])
        assert list(replies) == [held.node]
        assert shared.tasks_in_hand([held.node]) == {held.node: (1, 3)}
        online = wait_for(
            lambda: shared.workers_online(cluster),
            timeout=30,
            message=f"no heartbeat of {held.node} routed to its cluster",
        )
        assert sum(online.values()) == 1  # by pool: the node's name before the @
        assert shared.threads == 2
    finally:
        shared.release(cluster)
        shared.close()
    assert shared.threads == 0
    wait_for(
        lambda: _connections(rabbit, rabbit.username) <= before,
        timeout=15,
        message="the closed broker left AMQP connections open",
    )


def test_without_a_management_api_the_shared_broker_says_unacked_is_unknown(
    rabbit: RabbitServer,
) -> None:
    queue = unique("fallback")
    app = producer(rabbit.amqp_url(), {"task_default_queue": queue})
    for _ in range(3):
        app.send_task(SLEEP_TASK, args=[0], queue=queue)
    app.close()
    shared = Broker(
        BrokerKey.of(rabbit.amqp_url(), KeyScheme()), timeout=TIMEOUT, census_timeout=TIMEOUT
    )
    try:
        assert "unknown without spec.broker.managementApi" in shared.counting

        def three_ready() -> QueueLoad | None:
            load = shared.read_loads([queue])[queue]
            return load if load.waiting == 3 else None

        load = wait_for(three_ready, timeout=15, message="the fallback never counted 3 ready")
        assert load == QueueLoad(waiting=3, in_flight=None, consumers=0, source=AMQP)
        shared.watch(("ns", "fallback"), [queue], 0.2, lambda: None)
        reading = wait_for(shared.backlog, timeout=10, message="no poll")
        assert reading.counts == {queue: 3}
        assert reading.in_flight is None
    finally:
        shared.close()


# --- a broker that goes away -------------------------------------------------------------------
# Last in the module: they stop and restart its shared server, after which kombu's process-wide
# pools still hold connections to the old node for any test that would come after.


def test_a_frozen_rabbitmq_is_unavailable_within_the_timeout(
    rabbit: RabbitServer, api: ManagementApi
) -> None:
    rabbit.pause()
    try:
        reads: list[Callable[[], object]] = [
            lambda: rabbitmq.read_management(api, "/", ["celery"], timeout=1.0),
            lambda: rabbitmq.read_amqp(rabbit.amqp_url(), ["celery"], timeout=1.0),
        ]
        for read in reads:
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match=r"timed out|timeout") as raised:
                read()
            assert time.monotonic() - started < 1.0 + 0.5
            assert rabbit.password not in str(raised.value)
    finally:
        rabbit.resume()


def test_a_stopped_rabbitmq_is_unavailable_at_once_and_readable_after_restart(
    rabbit: RabbitServer, api: ManagementApi
) -> None:
    rabbit.stop()
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as management:
            rabbitmq.read_management(api, "/", ["celery"], timeout=TIMEOUT)
        with pytest.raises(BrokerUnavailable) as amqp:
            rabbitmq.read_amqp(rabbit.amqp_url(), ["celery"], timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT
    finally:
        rabbit.start()
    # Refused, or reset when the kernel had accepted the connection before the node died (seen
    # on a loaded machine): either way down, said at once.
    down = ("[Errno 111] Connection refused", "[Errno 104] Connection reset by peer")
    assert str(management.value) in {
        f"the management API {rabbit.management_url}: cannot list the queues: {why}" for why in down
    }
    assert str(amqp.value).startswith(f"amqp://127.0.0.1:{rabbit.amqp_port}//: cannot read")
    assert any(why.partition("] ")[2] in str(amqp.value) for why in down)
    for message in (str(management.value), str(amqp.value)):
        assert rabbit.password not in message
        assert rabbit.username not in message
    assert rabbitmq.read_management(api, "/", ["celery"], timeout=TIMEOUT)["celery"].waiting == 0
