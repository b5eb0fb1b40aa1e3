"""Hung-worker verdicts, restart budget and the mass-failure guard, with the time passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from celery_operator.health import (
    Budget,
    Kind,
    Memory,
    Policy,
    Reply,
    judge,
    mass_failure,
    remember,
    restarts_allowed,
)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
POLICY = Policy(unresponsive_cycles=3, stuck_seconds=600, startup_seconds=120)
OLD = timedelta(hours=1)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _run(cycles: list[tuple[float, Reply | None]]) -> Memory:
    memory: Memory | None = None
    for at, reply in cycles:
        memory = remember(memory, reply, _at(at))
    assert memory is not None
    return memory


def test_remember_counts_misses_and_keeps_first_sight_of_each_task() -> None:
    memory = _run(
        [
            (0, Reply(processed=5, slots=2, active=frozenset({"a"}))),
            (10, Reply(processed=5, slots=2, active=frozenset({"a", "b"}))),
            (20, None),
            (30, None),
        ]
    )
    assert (memory.missed, memory.answered_ever, memory.processed) == (2, True, 5)
    assert memory.progress_at == _at(0)
    assert memory.task_since == {"a": _at(0), "b": _at(10)}
    back = remember(memory, Reply(processed=6, slots=2, active=frozenset({"b"})), _at(40))
    assert (back.missed, back.progress_at, back.task_since) == (0, _at(40), {"b": _at(10)})


BUSY_FOREVER = Reply(processed=7, slots=2, active=frozenset({"x", "y"}))
ONE_SLOT = Reply(processed=7, slots=2, active=frozenset({"x"}))
MOVED = Reply(processed=8, slots=2, active=frozenset({"x", "y"}))


@pytest.mark.parametrize(
    ("case", "cycles", "now", "backlog", "age", "kind"),
    [
        ("idle", [(0, Reply(1, 2))], 0, 0, OLD, Kind.HEALTHY),
        ("one missed cycle", [(0, Reply(1, 2)), (10, None)], 10, 0, OLD, Kind.HEALTHY),
        (
            "three missed cycles",
            [(0, Reply(1, 2)), (10, None), (20, None), (30, None)],
            30,
            0,
            OLD,
            Kind.UNRESPONSIVE,
        ),
        ("new pod silent", [(0, None), (10, None), (20, None)], 20, 0, timedelta(seconds=30),
         Kind.STARTING),
        ("never answered after startup", [(0, None), (10, None), (20, None)], 20, 0, OLD,
         Kind.UNRESPONSIVE),
        ("long task, slot free", [(0, ONE_SLOT), (700, ONE_SLOT)], 700, 5, OLD, Kind.BUSY),
        ("every slot past the limit, backlog", [(0, BUSY_FOREVER), (600, BUSY_FOREVER)], 600, 5,
         OLD, Kind.STUCK),
        ("every slot past the limit, no backlog", [(0, BUSY_FOREVER), (600, BUSY_FOREVER)], 600, 0,
         OLD, Kind.BUSY),
        ("every slot busy, within the limit", [(0, BUSY_FOREVER), (599, BUSY_FOREVER)], 599, 5,
         OLD, Kind.BUSY),
        (
            "slots busy with new tasks, progress",
            [(0, BUSY_FOREVER), (600, Reply(9, 2, frozenset({"p", "q"})))],
            600,
            5,
            OLD,
            Kind.BUSY,
        ),
        (
            "same tasks but the count moved (a third slot finished work)",
            [(0, BUSY_FOREVER), (500, MOVED), (700, MOVED)],
            700,
            5,
            OLD,
            Kind.BUSY,
        ),
    ],
)  # fmt: skip
def test_verdicts(
    case: str,
    cycles: list[tuple[float, Reply | None]],
    now: float,
    backlog: int,
    age: timedelta,
    kind: Kind,
) -> None:
    memory = _run(cycles)
    verdict = judge(
        "pod-a", memory, cycles[-1][1], POLICY, backlog=backlog, pod_age=age, now=_at(now)
    )
    assert verdict.kind == kind, (case, verdict)
    assert verdict.hung == (kind in (Kind.UNRESPONSIVE, Kind.STUCK))


def test_stuck_evidence_names_the_numbers() -> None:
    memory = _run([(0, BUSY_FOREVER), (650, BUSY_FOREVER)])
    verdict = judge("p", memory, BUSY_FOREVER, POLICY, backlog=4, pod_age=OLD, now=_at(650))
    assert verdict.evidence == (
        "all 2 slot(s) running the same tasks for at least 650s, no new task started for 650s "
        "(limit 600s), 4 message(s) waiting"
    )


@pytest.mark.parametrize(
    ("before", "now", "mass"),
    [
        (10, 10, False),
        (10, 9, False),  # one worker down: judge it
        (10, 5, True),  # half at once: the broker or the network
        (10, 0, True),
        (2, 0, True),
        (1, 0, False),  # a single worker: nothing to compare with
        (3, 2, False),
        (0, 0, False),
    ],
)
def test_mass_failure(before: int, now: int, mass: bool) -> None:
    assert mass_failure(before, now) is mass


BUDGET = Budget(max_restarts=3, window_seconds=600, max_unavailable_percent=25)


@pytest.mark.parametrize(
    ("recent", "replicas", "unavailable", "allowed"),
    [
        ([], 8, 0, 2),  # 25 % of 8
        ([], 2, 0, 1),  # never less than one at a time
        ([], 8, 2, 0),  # two already being replaced
        ([-60, -120], 8, 0, 1),  # two of three used in the window
        ([-60, -120, -300], 8, 0, 0),
        ([-601, -700, -900], 8, 0, 2),  # all outside the window
        ([], 100, 0, 3),  # the window's budget caps it
    ],
)
def test_restart_budget(recent: list[int], replicas: int, unavailable: int, allowed: int) -> None:
    got = restarts_allowed(
        BUDGET,
        recent=[_at(s) for s in recent],
        replicas=replicas,
        unavailable=unavailable,
        now=T0,
    )
    assert got == allowed


def test_a_silence_shorter_than_the_kubelets_window_is_not_unresponsive() -> None:
    policy = Policy(
        unresponsive_cycles=3, stuck_seconds=600, startup_seconds=120, min_silence_seconds=45
    )
    cycles: list[tuple[float, Reply | None]] = [
        (0, Reply(1, 2)),
        (10, None),
        (20, None),
        (30, None),
    ]
    memory = _run(cycles)
    early = judge("p", memory, None, policy, backlog=0, pod_age=OLD, now=_at(30))
    assert early.kind == Kind.HEALTHY
    assert "the kubelet may restart it" in early.evidence
    memory = remember(memory, None, _at(55))
    late = judge("p", memory, None, policy, backlog=0, pod_age=OLD, now=_at(55))
    assert late.kind == Kind.UNRESPONSIVE
    assert late.evidence == "no answer to ping/stats/active for 4 cycles in a row (45s)"
