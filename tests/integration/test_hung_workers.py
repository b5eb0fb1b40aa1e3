"""Hung-worker verdicts against real ``celery worker`` processes and a real Redis.

Each cycle is what the operator's monitor does: one ``census`` (ping, stats and active, each
broadcast once), then ``remember`` and ``judge`` for every expected worker, unless the census
could not reach the broker or most workers fell silent at once (``mass_failure``): then nobody
is judged. The policy's limits are short so that the tests stay short; the clock is real.

A worker's pod is the name part of its node name here (``w1@integration`` -> ``w1``): the
fixtures give every test worker the same host part, which the operator's pods make unique.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Final

import pytest
import redis
from celery import Celery

from celery_operator.broker import read_backlog
from celery_operator.health import (
    HUNG,
    Kind,
    Memory,
    Policy,
    Reply,
    Verdict,
    judge,
    mass_failure,
    remember,
)
from celery_operator.queues import KeyScheme
from celery_operator.remote import WorkersUnreachable, census, control_app
from tests.integration.procs import (
    CeleryProcess,
    RedisServer,
    WorkerFactory,
    client_app,
    wait_for,
)

POLICY: Final = Policy(unresponsive_cycles=3, stuck_seconds=4, startup_seconds=0)
CENSUS_TIMEOUT: Final = 1.0
PERIOD: Final = 1.0
"""Seconds from the start of one cycle to the start of the next."""
POD_AGE: Final = timedelta(days=1)
"""Every pod is long past its startup: a silent worker is judged as soon as it has missed enough."""
QUEUE: Final = "q"
FOREVER: Final = 3600
"""Seconds a "stuck" task sleeps: far longer than any test, so only a kill ends it."""
OUTAGE: Final = 60.0
"""How long the broker stays down in the outage test (the issue asks for a minute)."""
BOTH_HEALTHY: Final = {"w1": Kind.HEALTHY, "w2": Kind.HEALTHY}


@dataclass(frozen=True)
class Cycle:
    """What one cycle saw and decided."""

    replies: dict[str, Reply]
    """By pod: the workers that answered."""
    verdicts: dict[str, Verdict]
    """By pod; empty when the mass-failure guard held everybody back."""
    answered_before: int
    backlog: int
    seconds: float
    """How long the census took."""

    @property
    def guarded(self) -> bool:
        return mass_failure(self.answered_before, len(self.replies))

    def kinds(self) -> dict[str, Kind]:
        return {pod: verdict.kind for pod, verdict in self.verdicts.items()}


@dataclass
class Monitor:
    """The operator's cycle for one pool, with its memories between cycles, on the real clock."""

    url: str
    pods: Sequence[str]
    queues: Sequence[str] = (QUEUE,)
    policy: Policy = POLICY
    memories: dict[str, Memory] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    history: list[Cycle] = field(default_factory=list)

    def __post_init__(self) -> None:
        # One control app for every cycle, as the operator keeps one per broker.
        self.app: Celery = control_app(self.url, KeyScheme(), timeout=CENSUS_TIMEOUT)
        self.redis: redis.Redis[bytes] = redis.Redis.from_url(self.url, socket_timeout=5)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.app.close()
        self.redis.close()

    def cycle(self) -> Cycle:
        """One cycle; raises WorkersUnreachable (judging nobody) when the broker is down."""
        started = time.monotonic()
        nodes = [f"{pod}@integration" for pod in self.pods]
        replies = census(self.app, nodes, timeout=CENSUS_TIMEOUT)
        seconds = time.monotonic() - started
        now = datetime.now(UTC)
        by_pod = {node.partition("@")[0]: reply for node, reply in replies.items()}
        unexpected = set(by_pod) - set(self.pods)
        assert not unexpected, f"replies from workers nobody expected: {unexpected}"
        backlog = sum(read_backlog(self.redis, self.queues, KeyScheme()).values())
        before = self.answered & set(self.pods)
        answered = before & set(by_pod)
        verdicts: dict[str, Verdict] = {}
        if not mass_failure(len(before), len(answered)):
            # As the operator: the silent ones of a mass failure do not count as missing a cycle.
            self.answered = set(by_pod)
            for pod in self.pods:
                reply = by_pod.get(pod)
                memory = self.memories[pod] = remember(self.memories.get(pod), reply, now)
                verdicts[pod] = judge(
                    pod, memory, reply, self.policy, backlog=backlog, pod_age=POD_AGE, now=now
                )
        done = Cycle(by_pod, verdicts, len(before), backlog, seconds)
        self.history.append(done)
        return done

    def run(self, seconds: float) -> list[Cycle]:
        """Cycles every PERIOD for ``seconds``; returns the cycles run."""
        cycles: list[Cycle] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            cycles.append(self.tick())
        return cycles

    def tick(self) -> Cycle:
        """One cycle, then the rest of PERIOD (also when the cycle raises)."""
        started = time.monotonic()
        try:
            return self.cycle()
        finally:
            time.sleep(max(0.0, PERIOD - (time.monotonic() - started)))


def pod(worker: CeleryProcess) -> str:
    return worker.node.partition("@")[0]


@contextlib.contextmanager
def stopped(*workers: CeleryProcess) -> Iterator[None]:
    """SIGSTOP the workers' main processes (the pool children run on), SIGCONT when done."""
    try:
        for worker in workers:
            worker.proc.send_signal(signal.SIGSTOP)
        yield
    finally:
        for worker in workers:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGCONT)


def kill(worker: CeleryProcess) -> None:
    """SIGKILL the worker and its pool: a warm shutdown would wait for its endless tasks."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(timeout=10)


def send_sleeps(url: str, seconds: float, count: int) -> None:
    client = client_app(url)
    try:
        for _ in range(count):
            client.send_task("celery_demo.tasks.sleep", args=[seconds], queue=QUEUE)
    finally:
        client.close()


def wait_active(monitor: Monitor, worker: str, count: int) -> Cycle:
    """Cycle until ``worker`` reports ``count`` active tasks; returns that cycle."""

    def running() -> Cycle | None:
        done = monitor.tick()
        reply = done.replies.get(worker)
        return done if reply is not None and len(reply.active) == count else None

    return wait_for(running, timeout=20, interval=0, message=f"{worker} never ran {count} tasks")


def test_stopped_main_process_is_unresponsive_and_the_other_healthy(
    celery_worker: WorkerFactory, redis_url: str
) -> None:
    """A frozen main process answers nothing: after enough cycles it is hung; its peer is not."""
    w1 = celery_worker("-Q", QUEUE, "-c", "1", name="w1")
    w2 = celery_worker("-Q", QUEUE, "-c", "1", name="w2")
    with Monitor(redis_url, [pod(w1), pod(w2)]) as monitor:
        # With limit = the nodes asked, a census in which all answer ends with the last reply.
        started = time.monotonic()
        replies = census(monitor.app, [w1.node, w2.node], timeout=5)
        assert set(replies) == {w1.node, w2.node}
        assert time.monotonic() - started < 4, "the census waited out its timeout"

        first = monitor.cycle()
        assert first.kinds() == BOTH_HEALTHY
        with stopped(w1):
            cycles = [monitor.tick() for _ in range(POLICY.unresponsive_cycles)]
        for number, done in enumerate(cycles, start=1):
            assert set(done.replies) == {"w2"}, done
            # Counted from what was observed: 2 answered, then 1 of them. One of two is no mass.
            assert (done.answered_before, len(done.replies)) == (2 if number == 1 else 1, 1)
            assert not mass_failure(done.answered_before, len(done.replies))
            assert done.verdicts["w2"].kind is Kind.HEALTHY
            expected = Kind.UNRESPONSIVE if number >= POLICY.unresponsive_cycles else Kind.HEALTHY
            assert done.verdicts["w1"].kind is expected, done.verdicts["w1"]
        assert "3 cycles in a row" in cycles[-1].verdicts["w1"].evidence
        # Once it runs again it answers again, and is healthy from the next cycle on.
        wait_for(
            lambda: monitor.tick().kinds() == BOTH_HEALTHY,
            timeout=15,
            interval=0,
            message="w1 did not answer again after SIGCONT",
        )


def test_every_slot_on_one_task_with_a_backlog_is_stuck(
    celery_worker: WorkerFactory, redis_url: str
) -> None:
    """Both slots run endless tasks while work waits: stuck once ``stuck_seconds`` have passed."""
    worker = celery_worker("-Q", QUEUE, "-c", "2", name="w1")
    try:
        with Monitor(redis_url, [pod(worker)]) as monitor:
            send_sleeps(redis_url, FOREVER, 2)
            cycles = [wait_active(monitor, "w1", 2)]
            send_sleeps(redis_url, 1, 3)
            cycles += monitor.run(POLICY.stuck_seconds + 3)
            last = cycles[-1]
            assert last.backlog == 3, "the backlog was consumed: the slots were not all busy"
            kinds = [done.verdicts["w1"].kind for done in cycles]
            assert kinds[-1] is Kind.STUCK, cycles[-1]
            # Stuck only from the limit on, and for good once it is: before, it is merely busy.
            first_stuck = kinds.index(Kind.STUCK)
            assert first_stuck > 0, kinds
            assert set(kinds[:first_stuck]) == {Kind.BUSY}, kinds
            assert set(kinds[first_stuck:]) == {Kind.STUCK}, kinds
            evidence = last.verdicts["w1"].evidence
            assert "all 2 slot(s)" in evidence
            assert "3 message(s) waiting" in evidence
    finally:
        kill(worker)


def test_long_tasks_without_a_backlog_are_busy_never_hung(
    celery_worker: WorkerFactory, redis_url: str
) -> None:
    """Every slot on a long task beyond ``stuck_seconds``, but no work waits: busy, not stuck."""
    worker = celery_worker("-Q", QUEUE, "-c", "2", name="w1")
    try:
        with Monitor(redis_url, [pod(worker)]) as monitor:
            send_sleeps(redis_url, POLICY.stuck_seconds + 8, 2)
            wait_active(monitor, "w1", 2)
            cycles = monitor.run(POLICY.stuck_seconds + 2)
            assert len(cycles) >= POLICY.stuck_seconds + 1, "too few cycles to pass the limit"
            for done in cycles:
                assert done.backlog == 0
                assert done.verdicts["w1"].kind is Kind.BUSY, done.verdicts["w1"]
                assert "2/2 slot(s) busy" in done.verdicts["w1"].evidence
            reply = cycles[-1].replies["w1"]
            assert len(reply.active) == 2, "the tasks ended before the limit was passed"
            assert reply.slots == 2
    finally:
        kill(worker)


def test_broker_outage_of_a_minute_judges_nobody(
    celery_worker: WorkerFactory, redis_server: RedisServer
) -> None:
    """While the broker is down no cycle can ask anybody, so nobody is judged; afterwards the
    workers reconnect (Celery's backoff) and are healthy, without ever having looked hung."""
    w1 = celery_worker("-Q", QUEUE, "-c", "1", name="w1")
    w2 = celery_worker("-Q", QUEUE, "-c", "1", name="w2")
    with Monitor(redis_server.url, [pod(w1), pod(w2)]) as monitor:
        assert monitor.cycle().kinds() == BOTH_HEALTHY
        remembered = dict(monitor.memories)
        judged = len(monitor.history)
        redis_server.stop()
        failures = 0
        deadline = time.monotonic() + OUTAGE
        while time.monotonic() < deadline:
            started = time.monotonic()
            with pytest.raises(WorkersUnreachable):
                monitor.tick()
            # A monitor must say the broker is down, not wait for it.
            assert time.monotonic() - started < PERIOD + 5
            failures += 1
        assert failures >= OUTAGE / 10
        assert len(monitor.history) == judged, "a cycle judged workers without a broker"
        assert monitor.memories == remembered
        redis_server.start()

        def recovered() -> bool:
            with contextlib.suppress(WorkersUnreachable):
                done = monitor.tick()
                return done.kinds() == BOTH_HEALTHY
            return False

        wait_for(recovered, timeout=60, interval=0, message="the workers did not come back")
        after = monitor.history[judged:]
        # After a minute Celery's reconnect backoff is well over 10 s: the broker is back before
        # the workers, and the cycles in between hear nobody. The guard must hold them back, or
        # they would count as missing cycles and end up unresponsive.
        assert any(done.guarded for done in after), [done.replies for done in after]
        hung = [v for done in after for v in done.verdicts.values() if v.kind in HUNG]
        assert not hung, hung
    w1.assert_running()
    w2.assert_running()


def test_mass_silence_holds_every_verdict_back(
    celery_worker: WorkerFactory, redis_url: str
) -> None:
    """When every worker that answered falls silent at once, the cause is not the workers."""
    w1 = celery_worker("-Q", QUEUE, "-c", "1", name="w1")
    w2 = celery_worker("-Q", QUEUE, "-c", "1", name="w2")
    with Monitor(redis_url, [pod(w1), pod(w2)]) as monitor:
        assert monitor.cycle().kinds() == BOTH_HEALTHY
        with stopped(w1, w2):
            cycles = [monitor.tick() for _ in range(POLICY.unresponsive_cycles + 1)]
        for done in cycles:
            assert done.replies == {}
            assert done.answered_before == 2
            assert mass_failure(done.answered_before, len(done.replies))
            assert done.guarded
            assert done.verdicts == {}, "a silent worker was judged during a mass failure"
        assert all(memory.missed == 0 for memory in monitor.memories.values())
