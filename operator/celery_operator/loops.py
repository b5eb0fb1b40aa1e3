"""One reconcile loop per CeleryCluster: serial for each cluster, concurrent across clusters.

A loop reconciles at once when woken (the cluster or one of its children changed), and every
``interval`` seconds otherwise. Waking a loop that is busy makes it run once more afterwards,
never twice at the same time, so reconciles of one cluster never race each other. Between two
reconciles it runs the autoscaler's polls (``poll``) when the last outcome asks for them
(``Outcome.poll_in``), or at once when nudged (the broker's poller saw the cluster's queues
change): in the same loop, so a poll and a reconcile never race either.

A loop ends when its reconcile finds the cluster gone: that reconcile releases what the operator
held for it. A deleted cluster is therefore woken, never cancelled, so the release always runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from celery_operator import metrics
from celery_operator.reconciler import Outcome

log = logging.getLogger(__name__)

ClusterKey = tuple[str, str]
"""(namespace, name)"""

ReconcileFn = Callable[[str, str], Outcome]
"""A blocking reconcile of (namespace, name); run in a worker thread."""

MAX_BACKOFF_SECONDS = 60.0


@dataclass
class _Loop:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to reconcile now (also sets ``signal``)."""
    nudged: bool = False
    """Set to poll now."""
    signal: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by either: what the loop sleeps on."""
    task: asyncio.Task[None] | None = None


@dataclass
class Stats:
    reconciles: int = 0
    failures: int = 0
    writes: int = 0
    polls: int = 0


class ClusterLoops:
    def __init__(
        self,
        reconcile: ReconcileFn,
        interval: float,
        debounce: float,
        poll: ReconcileFn | None = None,
    ) -> None:
        self._reconcile = reconcile
        self._poll = poll
        self._interval = interval
        self._debounce = debounce
        self._loops: dict[ClusterKey, _Loop] = {}
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self.stats = Stats()

    def poke(self, key: ClusterKey, *, create: bool) -> None:
        """Wake the loop of ``key``; start one if ``create`` (the cluster itself was seen)."""
        loop = self._loops.get(key)
        if loop is None:
            if not create:
                return
            self._event_loop = asyncio.get_running_loop()
            loop = self._loops[key] = _Loop()
            loop.task = asyncio.create_task(self._run(key, loop), name=f"reconcile {key}")
        loop.wake.set()
        loop.signal.set()

    def nudge(self, key: ClusterKey) -> None:
        """Have the loop of ``key`` poll now. Thread-safe: the broker's poller calls it."""
        if self._event_loop is not None:
            self._event_loop.call_soon_threadsafe(self._nudge, key)

    def _nudge(self, key: ClusterKey) -> None:
        loop = self._loops.get(key)
        if loop is not None:
            loop.nudged = True
            loop.signal.set()

    def __contains__(self, key: ClusterKey) -> bool:
        return key in self._loops

    async def stop(self) -> None:
        tasks = [loop.task for loop in self._loops.values() if loop.task is not None]
        self._loops.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, key: ClusterKey, loop: _Loop) -> None:
        namespace, name = key
        backoff = 1.0
        while True:
            await asyncio.sleep(self._debounce)
            loop.wake.clear()
            loop.signal.clear()  # a nudge stays pending: the poll it asks for runs after this
            delay = self._interval
            poll_in: float | None = None
            started = time.monotonic()
            try:
                outcome = await asyncio.to_thread(self._reconcile, namespace, name)
            except Exception:
                self.stats.failures += 1
                metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
                log.exception(
                    "reconcile of %s/%s failed; retrying in %.0fs", namespace, name, backoff
                )
                delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF_SECONDS)
            else:
                backoff = 1.0
                poll_in = outcome.poll_in if self._poll is not None else None
                self.stats.reconciles += 1
                self.stats.writes += outcome.writes
                if not outcome.found:
                    # That reconcile released the cluster and its series: record nothing more.
                    if self._loops.get(key) is loop:
                        del self._loops[key]
                    return
                metrics.RECONCILE_SECONDS.labels(namespace, name).observe(
                    time.monotonic() - started
                )
                if outcome.writes:
                    log.info(
                        "reconciled %s/%s: %d writes, phase %s",
                        namespace,
                        name,
                        outcome.writes,
                        outcome.phase,
                    )
            await self._wait(namespace, name, loop, delay, poll_in)

    async def _wait(
        self, namespace: str, name: str, loop: _Loop, delay: float, poll_in: float | None
    ) -> None:
        """Until woken or ``delay`` has passed, running the autoscaler's polls as they come due
        or as the loop is nudged."""
        deadline = asyncio.get_running_loop().time() + delay
        while True:
            left = deadline - asyncio.get_running_loop().time()
            timeout = left if poll_in is None else min(left, poll_in)
            if not loop.nudged:  # a nudge that came during the reconcile is not lost
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(loop.signal.wait(), timeout=max(timeout, 0.0))
            if loop.wake.is_set():
                return
            nudged, loop.nudged = loop.nudged, False
            loop.signal.clear()
            if self._poll is None or (not nudged and (poll_in is None or timeout >= left)):
                return
            try:
                polled = await asyncio.to_thread(self._poll, namespace, name)
            except Exception:
                self.stats.failures += 1
                metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
                log.exception("autoscaler poll of %s/%s failed", namespace, name)
                poll_in = 1.0
                continue
            self.stats.polls += 1
            self.stats.writes += polled.writes
            poll_in = polled.poll_in
