"""What a worker or beat does for its probes: keep the state file true, from its own main loop.

``celery-probe run <celery arguments>`` installs these hooks and then runs Celery's own command
line, so any app works unchanged:

* a **worker** gets one more consumer bootstep. It stamps a heartbeat every second from the
  consumer's timer, which the main process's event loop drives (the loop that also answers
  ``ping``): a stopped or blocked main process stops the heartbeat. It records what
  ``inspect active_queues`` would answer (the task consumer's queues) and whether the broker
  connection is up (Celery stops the consumer's steps when the connection is lost and starts them
  again once it is back). ``worker_shutting_down`` marks a warm shutdown.
* **beat** gets its scheduler's ``tick`` wrapped: each tick records when it ran and how long the
  scheduler will sleep before the next one.
* both wait at most ``$CELERY_PROBE_RECONNECT_MAX_SECONDS`` (4 s) between two attempts to reach
  a broker that went away (:func:`cap_reconnect_interval`).

Every write replaces a file of a few hundred bytes in an in-memory volume: about 50 µs a second.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery import bootsteps, signals

from celery_probes import state as probe_state


class StateFile:
    """The state file of this process, rewritten whole on every change."""

    def __init__(self, path: str, initial: probe_state.State) -> None:
        self.path = path
        self.pid = os.getpid()
        self.state: probe_state.State = dict(initial)
        probe_state.write_state(self.path, self.state)

    def update(self, **changes: object) -> None:
        if os.getpid() != self.pid:
            return  # a forked pool process: the state belongs to the main process
        self.state.update(changes)
        probe_state.write_state(self.path, self.state)


_worker: StateFile | None = None


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Consumer step: heartbeat, consumed queues and broker connection into the state file."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry: Any = None

    def start(self, c: Any) -> None:
        if _worker is None:
            return
        if not _worker.state.get("expected_queues"):
            # Fixed at the first start: a queue cancelled later must still be expected.
            _worker.update(expected_queues=sorted(c.app.amqp.queues.consume_from))
        _worker.update(connected=True, disconnected_at=None, pool=_pool_name(c.pool))
        self.beat(c)
        self.timer_entry = c.timer.call_repeatedly(probe_state.HEARTBEAT_SECONDS, self.beat, (c,))

    def beat(self, c: Any) -> None:
        if _worker is None:
            return
        consumer = getattr(c, "task_consumer", None)
        queues = sorted(q.name for q in consumer.queues) if consumer is not None else []
        _worker.update(heartbeat=time.monotonic(), consuming=queues)

    def stop(self, c: Any) -> None:
        """Called when the connection is lost (the consumer restarts) and on shutdown."""
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
        if _worker is not None and _worker.state.get("connected"):
            _worker.update(connected=False, disconnected_at=time.monotonic(), consuming=[])

    shutdown = stop


def _pool_name(pool: Any) -> str:
    return type(pool).__module__.rsplit(".", 1)[-1] if pool is not None else ""


def _on_worker_init(sender: str, instance: Any, **_: Any) -> None:
    global _worker  # noqa: PLW0603 (one worker per process, found by its signals)
    _worker = StateFile(
        os.path.join(probe_state.state_dir(), probe_state.WORKER_FILE),
        {"kind": "worker", "node": sender, "pid": os.getpid(), "started": time.time()},
    )
    instance.app.steps["consumer"].add(Heartbeat)


def _on_shutting_down(**_: Any) -> None:
    if _worker is not None:
        _worker.update(shutting_down=True)


def _on_task_start(**_: Any) -> None:
    """A solo pool runs tasks in the main loop, so its heartbeat pauses while one runs."""
    if _worker is not None and _worker.state.get("pool") == "solo":
        _worker.update(busy_since=time.monotonic())


def _on_task_end(**_: Any) -> None:
    if _worker is not None and _worker.state.get("busy_since") is not None:
        _worker.update(busy_since=None, heartbeat=time.monotonic())


def _on_beat_init(sender: Any, **_: Any) -> None:
    beat = StateFile(
        os.path.join(probe_state.state_dir(), probe_state.BEAT_FILE),
        {"kind": "beat", "pid": os.getpid(), "started": time.time()},
    )
    scheduler = sender.scheduler
    tick: Callable[..., Any] = scheduler.tick

    announce = _tick_announcer(sender.app)

    def recorded_tick(*args: Any, **kwargs: Any) -> Any:
        interval = tick(*args, **kwargs)
        next_in = float(interval) if isinstance(interval, int | float) else 0.0
        beat.update(last_tick=time.monotonic(), next_tick_in=next_in)
        announce()
        return interval

    scheduler.tick = recorded_tick


def _tick_announcer(app: Any) -> Callable[[], None]:
    """Tells the operator beat ticks: the time of the last tick under ``BEAT_TICK_KEY`` on a
    Redis broker, at most every ``BEAT_TICK_ANNOUNCE_SECONDS``. Never lets beat fail for it:
    a broker that does not answer costs at most a short timeout, and nothing else happens."""
    url = str(app.conf.broker_url or "").split(";")[0].strip()
    if not url.startswith(("redis://", "rediss://")):
        return lambda: None
    options = app.conf.broker_transport_options or {}
    key = f"{options.get('global_keyprefix') or ''}{probe_state.BEAT_TICK_KEY}"
    last = [0.0]
    client: list[Any] = []

    def announce() -> None:
        now = time.monotonic()
        if now - last[0] < probe_state.BEAT_TICK_ANNOUNCE_SECONDS:
            return
        last[0] = now
        try:
            if not client:
                import redis  # noqa: PLC0415 (only beat on a Redis broker needs it)

                client.append(
                    redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
                )
            client[0].set(key, f"{time.time():.3f}", ex=86400)
        except Exception:  # the announcement must never break beat
            return

    return announce


RECONNECT_MAX_ENV = "CELERY_PROBE_RECONNECT_MAX_SECONDS"
DEFAULT_RECONNECT_MAX_SECONDS = 4.0
"""Longest wait between two attempts to reach the broker (Celery's own: 30 s). A worker back
within 4 s of its broker keeps the liveness check's window (a broker that answers while this
worker is still disconnected) to one failed run, short of the kubelet's three; beat's stuck tick
likewise. A retry is one TCP connection: every 4 s per process costs a down broker nothing."""


def cap_reconnect_interval(seconds: float) -> None:
    """Make kombu wait at most ``seconds`` between connection attempts unless a caller chose.

    Celery's consumer (and beat's scheduler) reconnect through ``Connection.ensure_connection``
    with kombu's defaults: 2, 4, 6 ... up to 30 s between attempts. After a 90 s outage a worker
    then sleeps up to 20-30 s after the broker is back (measured: 16 s, for a 95 s outage), and
    its liveness check sees a broker that answers while the worker is still disconnected for
    long enough to fail three times. Only the longest interval changes: the first retries come
    as soon as before. ``broker_connection_max_retries`` (100) now spans about 7 minutes instead
    of 46; the worker's consumer starts over when it runs out, beat's next tick tries again.
    """
    from kombu.connection import Connection  # noqa: PLC0415 (the launcher imports it anyway)

    ensure: Callable[..., Any] = Connection._ensure_connection

    def capped(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Positionally: errback, max_retries, interval_start, interval_step, interval_max.
        if len(args) < 5:
            kwargs.setdefault("interval_max", seconds)
        return ensure(self, *args, **kwargs)

    Connection._ensure_connection = capped  # type: ignore[method-assign]


def reconnect_max_seconds(environ: Mapping[str, str]) -> float | None:
    """``$CELERY_PROBE_RECONNECT_MAX_SECONDS``: None to leave kombu's own backoff (0 or less)."""
    raw = environ.get(RECONNECT_MAX_ENV, "").strip()
    if not raw:
        return DEFAULT_RECONNECT_MAX_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{RECONNECT_MAX_ENV} must be a number of seconds, not {raw!r}") from None
    return seconds if seconds > 0 else None


def install() -> None:
    """Connect the hooks to Celery's signals (strong references: they live as long as Celery)."""
    signals.celeryd_init.connect(_on_worker_init, weak=False)
    signals.worker_shutting_down.connect(_on_shutting_down, weak=False)
    signals.task_prerun.connect(_on_task_start, weak=False)
    signals.task_postrun.connect(_on_task_end, weak=False)
    signals.beat_init.connect(_on_beat_init, weak=False)


def run_celery(argv: list[str]) -> int:
    """Run ``celery <argv>`` in this process with the hooks installed."""
    directory = probe_state.state_dir()
    for name in (probe_state.WORKER_FILE, probe_state.BEAT_FILE):
        # The directory outlives a container restart: a previous run's state must not speak
        # for this one.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    try:
        cap = reconnect_max_seconds(os.environ)
    except ValueError as error:
        print(f"celery-probe run: {error}", file=sys.stderr)
        return 2
    if cap is not None:
        cap_reconnect_interval(cap)
    install()
    from celery.bin.celery import main as celery_main  # noqa: PLC0415

    sys.argv = ["celery", *argv]
    result = celery_main()
    return int(result or 0)
