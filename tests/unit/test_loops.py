from __future__ import annotations

import asyncio
import threading
import time

from celery_operator.loops import ClusterLoops
from celery_operator.reconciler import Outcome


class Recorder:
    """A reconcile function that records calls and how many ran at once."""

    def __init__(self, found: bool = True, fail_first: int = 0, seconds: float = 0.0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.found = found
        self.fail_first = fail_first
        self.seconds = seconds
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, namespace: str, name: str) -> Outcome:
        with self._lock:
            self.calls.append((namespace, name))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.seconds)
            if len(self.calls) <= self.fail_first:
                raise RuntimeError("API down")
            return Outcome(found=self.found, writes=1)
        finally:
            with self._lock:
                self.running -= 1


async def _until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_pokes_while_busy_coalesce_into_one_more_run_never_two_at_once() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder(seconds=0.2)
        loops = ClusterLoops(recorder, interval=60, debounce=0.01)
        loops.poke(("ns", "a"), create=True)
        await _until(lambda: recorder.running == 1)
        for _ in range(10):
            loops.poke(("ns", "a"), create=True)
        await _until(lambda: len(recorder.calls) == 2)
        await asyncio.sleep(0.4)
        await loops.stop()
        return recorder

    recorder = asyncio.run(scenario())
    assert recorder.calls == [("ns", "a"), ("ns", "a")]
    assert recorder.most_at_once == 1


def test_child_events_do_not_start_loops_for_unknown_clusters() -> None:
    async def scenario() -> Recorder:
        recorder = Recorder()
        loops = ClusterLoops(recorder, interval=60, debounce=0.01)
        loops.poke(("ns", "ghost"), create=False)
        await asyncio.sleep(0.1)
        await loops.stop()
        return recorder

    assert asyncio.run(scenario()).calls == []


def test_interval_reconciles_without_events_and_failures_retry() -> None:
    async def scenario() -> tuple[Recorder, ClusterLoops]:
        recorder = Recorder(fail_first=1)
        loops = ClusterLoops(recorder, interval=0.05, debounce=0.0)
        loops.poke(("ns", "a"), create=True)
        await _until(lambda: len(recorder.calls) >= 4, timeout=5)
        await loops.stop()
        return recorder, loops

    _, loops = asyncio.run(scenario())
    assert loops.stats.failures == 1
    assert loops.stats.reconciles >= 3


def test_a_cluster_that_is_gone_ends_its_loop() -> None:
    async def scenario() -> tuple[Recorder, ClusterLoops]:
        recorder = Recorder(found=False)
        loops = ClusterLoops(recorder, interval=0.01, debounce=0.0)
        loops.poke(("ns", "a"), create=True)
        await _until(lambda: ("ns", "a") not in loops)
        await asyncio.sleep(0.05)
        await loops.stop()
        return recorder, loops

    recorder, _ = asyncio.run(scenario())
    assert recorder.calls == [("ns", "a")]


def test_polls_run_between_reconciles_never_beside_one_and_a_wake_wins() -> None:
    """The autoscaler's polls share the cluster's loop: they run when the last outcome asks for
    them, never at the same time as a reconcile, and a wake-up still reconciles at once."""
    order: list[str] = []
    running = 0
    most_at_once = 0
    lock = threading.Lock()

    def step(kind: str) -> Outcome:
        nonlocal running, most_at_once
        with lock:
            order.append(kind)
            running += 1
            most_at_once = max(most_at_once, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return Outcome(found=True, poll_in=0.02)

    async def scenario() -> ClusterLoops:
        loops = ClusterLoops(
            lambda ns, n: step("reconcile"),
            interval=60,
            debounce=0.0,
            poll=lambda ns, n: step("poll"),
        )
        loops.poke(("ns", "a"), create=True)
        await _until(lambda: order.count("poll") >= 5)
        loops.poke(("ns", "a"), create=True)
        await _until(lambda: order.count("reconcile") == 2)
        await _until(lambda: order[-1] == "poll")
        await loops.stop()
        return loops

    loops = asyncio.run(scenario())
    assert order[0] == "reconcile"
    assert order.count("reconcile") == 2  # the interval (60 s) never came due: only the wake
    assert order.count("poll") >= 6
    assert loops.stats.polls >= 5
    assert most_at_once == 1


def test_without_autoscaled_pools_no_poll_runs() -> None:
    polls: list[str] = []

    async def scenario() -> None:
        loops = ClusterLoops(
            lambda ns, n: Outcome(found=True),
            interval=0.05,
            debounce=0.0,
            poll=lambda ns, n: polls.append(n) or Outcome(found=True),  # type: ignore[func-returns-value]
        )
        loops.poke(("ns", "a"), create=True)
        await asyncio.sleep(0.3)
        await loops.stop()

    asyncio.run(scenario())
    assert polls == []


def test_a_released_cluster_gets_no_series_back() -> None:
    """The reconcile that finds a cluster gone has dropped its series: the loop must not record
    that reconcile's duration (which would export the deleted cluster again)."""
    from prometheus_client import REGISTRY  # noqa: PLC0415

    def labelled() -> int:
        return sum(
            1
            for family in REGISTRY.collect()
            for sample in family.samples
            if sample.labels.get("cluster") == "released"
        )

    async def scenario() -> None:
        loops = ClusterLoops(Recorder(found=False), interval=60, debounce=0.0)
        loops.poke(("ns", "released"), create=True)
        await _until(lambda: ("ns", "released") not in loops)
        await loops.stop()

    asyncio.run(scenario())
    assert labelled() == 0


def test_a_nudge_before_a_reconcile_is_not_lost() -> None:
    """The broker wakes a cluster idling at zero once per change: a nudge that lands while the
    loop debounces (or reconciles) must still make the poll run right after the reconcile."""
    polls: list[str] = []

    async def scenario() -> None:
        loops = ClusterLoops(
            lambda ns, n: Outcome(found=True, poll_in=None),  # idle at zero: only a nudge polls
            interval=60,
            debounce=0.1,
            poll=lambda ns, n: polls.append(n) or Outcome(found=True),  # type: ignore[func-returns-value]
        )
        loops.poke(("ns", "a"), create=True)
        await asyncio.sleep(0.02)
        loops.nudge(("ns", "a"))  # lands during the debounce
        await _until(lambda: len(polls) == 1, timeout=3)
        await loops.stop()

    asyncio.run(scenario())
    assert polls == ["a"]
