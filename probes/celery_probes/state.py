"""The state file a worker or beat keeps, and the verdicts the probes reach from it.

The verdicts are pure functions of the state and of ``now`` (a ``time.monotonic()`` reading, which
is system-wide on Linux, so the probe and the worker share one clock). The only I/O is reading and
writing the one small file. Every probe run imports this module, so it imports only cheap parts of
the standard library (no ``typing``, no ``dataclasses``: each would add tens of milliseconds).

When the state says the broker connection is gone past its grace, or beat's tick is late, the
verdict asks the broker itself, through a function it is given (``broker``; the checks pass
:func:`celery_probes.brokercheck.try_broker`, imported only then), to tell "down for everyone" (a
restart cannot help: pass) from "up, but this process is cut off" (fail).
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable

    BrokerCheck = Callable[[], tuple[bool, str]]
    """Tries the broker: (whether it answered, what was found, without credentials)."""

STATE_DIR_ENV = "CELERY_PROBE_DIR"
"""Where the state files live: the operator mounts an in-memory ``emptyDir`` there."""
DEFAULT_STATE_DIR = "/tmp/celery-probe"
WORKER_FILE = "worker.json"
BEAT_FILE = "beat.json"

HEARTBEAT_SECONDS = 1.0

BEAT_TICK_KEY = "celery-operator:beat:last-tick"
"""Redis key (after the broker's ``global_keyprefix``) where beat announces its last tick, as
Unix time, for the operator's ``celery_operator_beat_last_tick_timestamp_seconds``."""
BEAT_TICK_ANNOUNCE_SECONDS = 5.0
"""At most one announcement per this many seconds: one SET, whatever the schedule."""
"""How often a worker's main loop stamps its heartbeat."""
DEFAULT_MAX_AGE_SECONDS = 5.0
"""A heartbeat older than this means the worker's main loop is not running: the process is stopped,
its loop is blocked, or it is stuck reconnecting to the broker. Five missed beats: a loaded 2-core
node can delay one, never five."""
DEFAULT_BROKER_GRACE_SECONDS = 30.0
"""How long a worker may be without its broker connection before the check asks the broker
itself. Within it, a reconnect is assumed to be on its way; past it, the worker fails only if the
broker answers this pod (a restart cannot bring back a broker that is down for everyone)."""
DEFAULT_BEAT_GRACE_SECONDS = 15.0
"""How late beat's next tick may be: a tick sends the due tasks (through a broker that may be slow
to answer) and may write the schedule file first."""

State = dict[str, object]


class Verdict:
    """A probe's answer: pass or fail, and one line that says why (the kubelet shows it)."""

    __slots__ = ("message", "ok")

    def __init__(self, ok: bool, message: str) -> None:
        self.ok = ok
        self.message = message

    def __repr__(self) -> str:
        return f"Verdict({self.ok!r}, {self.message!r})"


def state_dir(environ: dict[str, str] | None = None) -> str:
    """The state directory named by ``$CELERY_PROBE_DIR``, or the default."""
    env = os.environ if environ is None else environ
    return env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR


def read_state(path: str) -> State | None:
    """The state in ``path``; None when there is none (not started, or not through the hooks)."""
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        # Written by rename, so a torn file means something else wrote it.
        return {"unreadable": str(error)}
    return state if isinstance(state, dict) else {"unreadable": "not a JSON object"}


def write_state(path: str, state: State) -> None:
    """Replace ``path`` with ``state`` atomically: a probe reads the old file or the new one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    scratch = f"{path}.{os.getpid()}.tmp"
    with open(scratch, "w", encoding="utf-8") as handle:
        json.dump(state, handle, separators=(",", ":"))
    os.replace(scratch, path)


def worker_liveness(
    state: State | None,
    now: float,
    max_age: float,
    broker_grace: float = DEFAULT_BROKER_GRACE_SECONDS,
    broker: BrokerCheck | None = None,
) -> Verdict:
    """Is the worker's main process running its loop, or could a restart help?

    Passes while every pool slot is busy (the main loop still beats), during a warm shutdown (the
    grace period bounds it), and while a solo pool runs a task in the main loop (a task that never
    ends is a hung worker, for the operator to judge, not the kubelet). Fails when the heartbeat
    stops (the process is stopped or its loop is blocked).

    Without its broker connection (Celery's main loop does not run while it reconnects) the
    worker passes for ``broker_grace``; after that ``broker`` is asked: while the broker does not
    answer this pod either, it is down for everyone and the worker passes; when it answers, this
    worker alone is cut off and fails. Without ``broker`` the grace alone decides.
    """
    problem = _unusable(state)
    if problem is not None:
        return Verdict(False, problem)
    assert state is not None
    if state.get("shutting_down"):
        return Verdict(True, "warm shutdown in progress")
    age = _age(state, "heartbeat", now)
    if age is None:
        return Verdict(False, "the worker has not started consuming yet")
    busy = _age(state, "busy_since", now)
    if not state.get("connected"):
        lost = _age(state, "disconnected_at", now) or 0.0
        if lost <= broker_grace:
            return Verdict(True, f"reconnecting to the broker for {lost:.0f}s")
        cut_off = f"this worker has been disconnected for {lost:.0f}s (grace {broker_grace:g}s)"
        if broker is None:
            return Verdict(False, f"broker connection lost: {cut_off}")
        return _unless_broker_down(broker, f"broker answers but {cut_off}")
    if age <= max_age:
        return Verdict(True, f"main loop alive (heartbeat {age:.1f}s ago)")
    if busy is not None:
        return Verdict(True, f"running a task in the main process for {busy:.0f}s (solo pool)")
    return Verdict(
        False,
        f"no heartbeat for {age:.0f}s (limit {max_age:g}s): the main process is stopped "
        f"or its loop is blocked",
    )


def worker_readiness(
    state: State | None, now: float, max_age: float, expected: list[str] | None = None
) -> Verdict:
    """Should the worker count as serving? Only while it consumes every queue it is meant to.

    ``expected`` defaults to the queues the worker was started with; a queue dropped since
    (``celery control cancel_consumer``) or not consumed after a reconnect makes it unready,
    and so does a warm shutdown, which stops consuming at once.
    """
    problem = _unusable(state)
    if problem is not None:
        return Verdict(False, problem)
    assert state is not None
    if state.get("shutting_down"):
        return Verdict(False, "warm shutdown: no longer consuming")
    if not state.get("connected"):
        return Verdict(False, "broker connection lost: consuming nothing")
    alive = worker_liveness(state, now, max_age)
    if not alive.ok:
        return alive
    if (
        _age(state, "busy_since", now) is not None
        and (_age(state, "heartbeat", now) or 0) > max_age
    ):
        return Verdict(False, "busy: a solo worker takes no more tasks while one runs")
    wanted = expected if expected is not None else _strings(state.get("expected_queues"))
    consuming = _strings(state.get("consuming"))
    missing = [queue for queue in wanted if queue not in consuming]
    if missing:
        return Verdict(False, f"not consuming queue(s) {', '.join(missing)}")
    return Verdict(True, f"consuming {', '.join(consuming) or 'no queues'}")


def beat_liveness(
    state: State | None, now: float, grace: float, broker: BrokerCheck | None = None
) -> Verdict:
    """Is beat's scheduler loop ticking? It must tick again by the time its last tick asked for
    (the sleep the scheduler chose), plus ``grace``. A stopped process, or a tick stuck sending a
    task to an unreachable broker, misses that time; then ``broker`` is asked, as for a worker:
    a broker down for everyone is waited for, a late tick while the broker answers fails."""
    problem = _unusable(state)
    if problem is not None:
        return Verdict(False, problem)
    assert state is not None
    age = _age(state, "last_tick", now)
    if age is None:
        return Verdict(False, "beat has not ticked yet")
    sleep = state.get("next_tick_in")
    late = age - (float(sleep) if isinstance(sleep, int | float) else 0.0)
    if late <= grace:
        return Verdict(True, f"scheduler ticking (last tick {age:.1f}s ago)")
    stalled = (
        f"scheduler loop stalled: last tick {age:.0f}s ago, the next was due {late:.0f}s ago "
        f"(grace {grace:g}s)"
    )
    if broker is None:
        return Verdict(False, stalled)
    return _unless_broker_down(broker, f"{stalled}; the broker answers")


def _unless_broker_down(broker: BrokerCheck, failure: str) -> Verdict:
    """Fail with ``failure`` (and what answered) if the broker answers; pass while it does not."""
    answered, found = broker()
    if answered:
        return Verdict(False, f"{failure}: {found}")
    return Verdict(
        True, f"broker unreachable from this pod too ({found}): waiting for it, not restarting"
    )


def _unusable(state: State | None) -> str | None:
    if state is None:
        return "no probe state yet: not started, or not started through `celery-probe run`"
    if "unreadable" in state:
        return f"probe state unreadable: {state['unreadable']}"
    return None


def _age(state: State, key: str, now: float) -> float | None:
    stamp = state.get(key)
    if not isinstance(stamp, int | float) or isinstance(stamp, bool):
        return None
    return max(0.0, now - float(stamp))


def _strings(value: object) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []
