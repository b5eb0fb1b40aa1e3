"""The autoscaling policy (``scaling.decide``): the HPA's algorithm on a Celery pool's load.

Every case runs at a fixed ``NOW``; times in a history are given as seconds before it, and the
sequences advance a simulated clock, so nothing here depends on the wall clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celery_operator import scaling
from celery_operator.scaling import DOWN, NONE, UP, Decision, History, Load, Reason, decide
from celery_operator.spec import Autoscaling, ScalingRules

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
BASE = Autoscaling(enabled=True, min_replicas=1, max_replicas=20)
"""The defaults (target 1 task per slot, 10 % tolerance, the HPA's behavior), 1 to 20."""


def policy(**changes: Any) -> Autoscaling:
    return dataclasses.replace(BASE, **changes)


def up(**changes: Any) -> ScalingRules:
    return dataclasses.replace(BASE.scale_up, **changes)


def down(**changes: Any) -> ScalingRules:
    return dataclasses.replace(BASE.scale_down, **changes)


NO_DOWN_WINDOW = down(stabilization_window_seconds=0)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def load(backlog: int | None, running: int | None = 0, held: int = 0, busy: int = 0) -> Load:
    return Load(backlog=backlog, running=running, held=held, busy_workers=busy)


def recommended(*pairs: tuple[float, int]) -> History:
    """A history of past recommendations, each (seconds ago, replicas)."""
    return History(recommendations=tuple((ago(s), r) for s, r in pairs))


def changed(*pairs: tuple[float, int]) -> History:
    """A history of past replica changes, each (seconds ago, +/- count)."""
    return History(changes=tuple((ago(s), d) for s, d in pairs))


@dataclass(frozen=True)
class Case:
    load: Load
    current: int
    replicas: int
    reason: str
    policy: Autoscaling = BASE
    concurrency: int = 2
    history: History = field(default_factory=History)
    limited: str | None = None
    recommended: int | None = None
    """The load's own recommendation, when the case is about what bounded it."""


def case(name: str, seen: Load, current: int, replicas: int, reason: str, **kw: Any) -> Any:
    """One row: (load, current replicas) -> (replicas, reason), named by ``name``."""
    return pytest.param(Case(seen, current, replicas, reason, **kw), id=name)


SCALE_DOWN_50 = policy(
    min_replicas=0, scale_down=down(stabilization_window_seconds=0, max_step_percent=50)
)
UP_WINDOW_60 = policy(scale_up=up(stabilization_window_seconds=60))
ZERO_OK = policy(min_replicas=0)

# fmt: off
CASES = [
    # --- up, by the load ----------------------------------------------------------------------
    case("burst from one: step max(200 pct, 1+4 pods)=5", load(20), 1, 5, Reason.STEP_LIMIT,
         recommended=10),
    case("step percent wins over the pod step: 6 -> 12", load(40), 6, 12, Reason.STEP_LIMIT,
         recommended=20),
    case("load within the step is followed: ceil(8 / 2)", load(7, running=1), 2, 4, Reason.LOAD,
         recommended=4),
    case("target per slot divides: ceil(31 / (4 * 2.5))", load(25, running=6), 2, 4, Reason.LOAD,
         policy=policy(target_tasks_per_slot=2.5), concurrency=4),
    case("target below one asks for more: ceil(5 / (2 * 0.5))", load(3, running=2), 2, 5,
         Reason.LOAD, policy=policy(target_tasks_per_slot=0.5)),
    # --- tolerance ----------------------------------------------------------------------------
    case("5 pct over target within tolerance holds", load(11, running=10), 4, 4,
         Reason.WITHIN_TOLERANCE, concurrency=5, recommended=4),
    case("5 pct over target with zero tolerance scales", load(11, running=10), 4, 5, Reason.LOAD,
         policy=policy(tolerance_percent=0), concurrency=5),
    case("10 pct under target within 15 pct tolerance holds", load(0, running=9), 10, 10,
         Reason.WITHIN_TOLERANCE, policy=policy(tolerance_percent=15), concurrency=1),
    case("10 pct under target outside 5 pct tolerance scales", load(0, running=9), 10, 9,
         Reason.LOAD, policy=policy(tolerance_percent=5), concurrency=1),
    # --- min and max --------------------------------------------------------------------------
    case("maxReplicas clamps and limits", load(100), 4, 5, Reason.MAX_REPLICAS,
         policy=policy(max_replicas=5), limited=Reason.MAX_REPLICAS, recommended=50),
    case("at maxReplicas with more load holds, limited", load(100), 5, 5, Reason.MAX_REPLICAS,
         policy=policy(max_replicas=5), limited=Reason.MAX_REPLICAS),
    case("idle pool stops at minReplicas, limited", load(0), 3, 2, Reason.MIN_REPLICAS,
         policy=policy(min_replicas=2, scale_down=NO_DOWN_WINDOW), limited=Reason.MIN_REPLICAS,
         recommended=0),
    case("idle pool without down window goes to zero", load(0), 3, 0, Reason.IDLE,
         policy=policy(min_replicas=0, scale_down=NO_DOWN_WINDOW)),
    case("pool below minReplicas is raised to it", load(0), 0, 1, Reason.MIN_REPLICAS,
         limited=Reason.MIN_REPLICAS, recommended=0),
    # --- from zero ----------------------------------------------------------------------------
    case("backlog above activationBacklog starts: ceil(6/2)", load(6), 0, 3, Reason.ACTIVATION,
         policy=policy(min_replicas=0, activation_backlog=5)),
    case("backlog equal to activationBacklog stays at zero", load(5), 0, 0, Reason.IDLE,
         policy=policy(min_replicas=0, activation_backlog=5)),
    case("one message activates with activationBacklog 0", load(1), 0, 1, Reason.ACTIVATION,
         policy=ZERO_OK),
    case("nothing waiting stays at zero", load(0), 0, 0, Reason.IDLE, policy=ZERO_OK),
    case("activation is step limited to maxStepPods", load(40), 0, 4, Reason.STEP_LIMIT,
         policy=ZERO_OK, recommended=20),
    case("from zero a step of 0 pods and 100 pct adds one", load(6), 0, 1, Reason.STEP_LIMIT,
         policy=policy(min_replicas=0, scale_up=up(max_step_pods=0)), recommended=3),
    case("tasks unknown does not stop activation", load(3, running=None), 0, 2,
         Reason.ACTIVATION, policy=ZERO_OK),
    # --- tasks the workers hold ---------------------------------------------------------------
    case("busy workers floor: 1 wanted, 3 hold tasks", load(0, running=2, held=3, busy=3), 5, 3,
         Reason.BUSY_WORKERS, policy=policy(scale_down=NO_DOWN_WINDOW)),
    case("prefetched tasks ask for none but keep theirs", load(0, held=5, busy=2), 4, 2,
         Reason.BUSY_WORKERS, policy=policy(scale_down=NO_DOWN_WINDOW)),
    case("tasks unknown blocks the scale-down", load(0, running=None), 5, 5,
         Reason.TASKS_UNKNOWN, policy=policy(min_replicas=0, scale_down=NO_DOWN_WINDOW),
         recommended=5),
    case("tasks unknown does not block a scale-up", load(10, running=None), 1, 5, Reason.LOAD),
    # --- step limits --------------------------------------------------------------------------
    case("scale-down by at most 50 pct", load(0), 10, 5, Reason.STEP_LIMIT, policy=SCALE_DOWN_50),
    case("scale-down takes the larger step: 3 pods over 10 pct", load(0), 10, 7,
         Reason.STEP_LIMIT, policy=policy(min_replicas=0, scale_down=down(
             stabilization_window_seconds=0, max_step_percent=10, max_step_pods=3))),
    case("removals earlier in the period count: hold", load(0), 5, 5, Reason.STEP_LIMIT,
         policy=SCALE_DOWN_50, history=changed((5, -5))),
    case("removals a period ago no longer count", load(0), 5, 2, Reason.STEP_LIMIT,
         policy=SCALE_DOWN_50, history=changed((15, -5))),
    case("additions earlier in the period count: hold", load(20), 5, 5, Reason.STEP_LIMIT,
         history=changed((10, 4))),
    # --- stabilization windows ----------------------------------------------------------------
    case("scale-up window takes the lowest", load(16), 2, 3, Reason.STABILIZING,
         policy=UP_WINDOW_60, history=recommended((50, 3), (30, 6)), recommended=8),
    case("scale-up window ignores older ones", load(16), 2, 6, Reason.STABILIZING,
         policy=UP_WINDOW_60, history=recommended((61, 1), (30, 6))),
    case("scale-down window takes the highest", load(4), 6, 6, Reason.STABILIZING,
         history=recommended((200, 6), (100, 4)), recommended=2),
    case("scale-down window ignores 300 s old", load(4), 6, 4, Reason.STABILIZING,
         history=recommended((300, 6), (100, 4))),
    case("beyond both windows nothing holds", load(4), 6, 2, Reason.LOAD,
         history=recommended((400, 6))),
]
# fmt: on


@pytest.mark.parametrize("row", CASES)
def test_decide(row: Case) -> None:
    decision = decide(row.load, row.current, row.concurrency, row.policy, row.history, NOW)
    assert (decision.replicas, decision.reason) == (row.replicas, row.reason), decision.message
    assert decision.current == row.current
    assert decision.limited == row.limited
    if row.recommended is not None:
        assert decision.recommended == row.recommended
    if row.replicas == row.current:
        assert decision.direction == NONE
    else:
        assert decision.direction == (UP if row.replicas > row.current else DOWN)


@pytest.mark.parametrize(
    ("replicas", "current", "direction"),
    [(5, 1, UP), (1, 5, DOWN), (3, 3, NONE), (0, 1, DOWN), (1, 0, UP)],
    ids=["up", "down", "none", "to zero", "from zero"],
)
def test_direction_compares_replicas_with_current(
    replicas: int, current: int, direction: str
) -> None:
    decision = Decision(replicas, current, Reason.LOAD, "", History(), recommended=replicas)
    assert decision.direction == direction


def test_messages_give_the_change_and_the_figures() -> None:
    scaled = decide(load(7, running=1), 2, 2, BASE, History(), NOW)
    assert scaled.message.startswith("2 → 4: 7 waiting + 1 running")
    held = decide(load(11, running=10), 4, 5, BASE, History(), NOW)
    assert held.message.startswith("4: ")
    assert "within 10% of the target" in held.message
    clamped = decide(load(100), 4, 2, policy(max_replicas=5), History(), NOW)
    assert clamped.message.endswith("maxReplicas is 5")


# --- the memory between polls ----------------------------------------------------------------


def test_fresh_history_counts_the_current_size_as_a_recommendation() -> None:
    history = scaling.fresh_history(3, NOW)
    assert history == History(recommendations=((NOW, 3),), changes=(), unreadable_since=None)
    # So an operator restart does not shrink an idle pool before a whole down window passed.
    decision = decide(load(0), 3, 2, policy(min_replicas=0), history, NOW + timedelta(seconds=299))
    assert (decision.replicas, decision.reason) == (3, Reason.STABILIZING)


def test_each_decision_records_its_recommendation_and_change() -> None:
    decision = decide(load(7, running=1), 2, 2, BASE, History(), NOW)
    assert decision.history.recommendations == ((NOW, 4),)
    assert decision.history.changes == ((NOW, 2),)
    held = decide(load(0, running=4), 2, 2, BASE, History(), NOW)
    assert held.history.recommendations == ((NOW, 2),)
    assert held.history.changes == ()  # no change, nothing for the step limits to count


def test_recommendations_older_than_both_windows_are_dropped() -> None:
    rules = policy(scale_up=up(stabilization_window_seconds=60))
    history = recommended((400, 9), (300, 8), (299, 3), (10, 2))
    decision = decide(load(4), 3, 2, rules, history, NOW)
    assert decision.history.recommendations == ((ago(299), 3), (ago(10), 2), (NOW, 2))


def test_step_limits_count_changes_made_by_the_recorded_history() -> None:
    """A burst at one poll a second: +4 at once, then held until the 15 s period passes."""
    current, history = 1, History()
    seen: list[tuple[int, int, str]] = []
    for second in (0, 1, 14, 15):
        at = NOW + timedelta(seconds=second)
        decision = decide(load(100), current, 2, BASE, history, at)
        seen.append((second, decision.replicas, decision.reason))
        current, history = decision.replicas, decision.history
    assert seen == [
        (0, 5, Reason.STEP_LIMIT),
        (1, 5, Reason.STEP_LIMIT),
        (14, 5, Reason.STEP_LIMIT),
        (15, 10, Reason.STEP_LIMIT),  # max(5 * 200 %, 5 + 4)
    ]


# --- the broker unreadable -------------------------------------------------------------------


@pytest.mark.parametrize("current", [0, 1, 3], ids=["at zero", "at one", "at three"])
def test_broker_unreadable_holds_the_replicas_and_remembers_since_when(current: int) -> None:
    rules = policy(min_replicas=0)
    first = decide(load(None, running=None), current, 2, rules, History(), NOW)
    assert (first.replicas, first.reason, first.direction) == (
        current,
        Reason.BROKER_UNREADABLE,
        NONE,
    )
    assert first.history.unreadable_since == NOW
    later = NOW + timedelta(seconds=40)
    second = decide(load(None, running=0), current, 2, rules, first.history, later)
    assert (second.replicas, second.reason) == (current, Reason.BROKER_UNREADABLE)
    assert second.history.unreadable_since == NOW  # kept from the first miss
    assert "(for 40s)" in second.message
    assert second.history.recommendations == ()  # missing data is no recommendation
    back = decide(load(0, running=0), current, 2, rules, second.history, later)
    assert back.history.unreadable_since is None


@pytest.mark.parametrize(
    ("current", "seconds", "replicas", "reason"),
    [
        (2, 0, 2, Reason.BROKER_UNREADABLE),
        (2, 29, 2, Reason.BROKER_UNREADABLE),
        (2, 30, 4, Reason.FALLBACK),
        (0, 100, 4, Reason.FALLBACK),
        (4, 100, 4, Reason.BROKER_UNREADABLE),
        (6, 100, 6, Reason.BROKER_UNREADABLE),
    ],
    ids=[
        "holds at first",
        "holds before afterSeconds",
        "raises at afterSeconds",
        "raises from zero",
        "at fallback holds",
        "above fallback never lowers",
    ],
)
def test_fallback_replicas_after_the_broker_stays_unreadable(
    current: int, seconds: int, replicas: int, reason: str
) -> None:
    rules = policy(min_replicas=0, fallback_replicas=4, fallback_after_seconds=30)
    since = History(unreadable_since=NOW)
    at = NOW + timedelta(seconds=seconds)
    decision = decide(load(None, running=None), current, 2, rules, since, at)
    assert (decision.replicas, decision.reason) == (replicas, reason)
    assert decision.history.unreadable_since == NOW
    expected = ((at, replicas - current),) if replicas != current else ()
    assert decision.history.changes == expected


def test_fallback_after_zero_seconds_applies_at_the_first_miss() -> None:
    rules = policy(fallback_replicas=3, fallback_after_seconds=0)
    decision = decide(load(None, running=None), 1, 2, rules, History(), NOW)
    assert (decision.replicas, decision.reason, decision.direction) == (3, Reason.FALLBACK, UP)


# --- sequences over simulated time -------------------------------------------------------------


def _run(
    rules: Autoscaling, current: int, polls: Sequence[tuple[int, Load]], history: History
) -> list[tuple[int, int, str]]:
    """Each poll as (second, replicas after it, reason), applying every decision."""
    out: list[tuple[int, int, str]] = []
    for second, seen in polls:
        decision = decide(seen, current, 2, rules, history, NOW + timedelta(seconds=second))
        out.append((second, decision.replicas, decision.reason))
        current, history = decision.replicas, decision.history
    return out


def test_an_idle_pool_holds_for_the_down_window_then_goes_to_zero() -> None:
    rules = policy(min_replicas=0)
    polls = [(s, load(0)) for s in range(0, 331, 30)]
    seen = _run(rules, 2, polls, scaling.fresh_history(2, NOW))
    assert seen[:-2] == [(s, 2, Reason.STABILIZING) for s in range(0, 271, 30)]
    assert seen[-2:] == [(300, 0, Reason.IDLE), (330, 0, Reason.IDLE)]


def test_a_pool_scales_to_zero_and_back() -> None:
    rules = policy(min_replicas=0, activation_backlog=2)
    polls = [
        (0, load(6, running=2)),  # busy: 8 tasks, 2 slots per worker, right at the target
        (10, load(0, running=4, busy=2)),  # the queue drained, two workers still at work
        (20, load(0)),  # all done: the down window holds the pool at its highest, 4 (at 0 s)
        (299, load(0)),
        (300, load(0)),  # 4 has left the window; 2 (at 10 s) is now the highest
        (310, load(0)),  # and has left it too
        (320, load(2)),  # at zero, 2 messages are not above activationBacklog
        (330, load(7)),  # 7 are: ceil(7 / 2) workers
        (331, load(0, running=7, busy=4)),  # the workers took them: 7 of 8 slots busy
    ]
    assert _run(rules, 4, polls, scaling.fresh_history(4, NOW)) == [
        (0, 4, Reason.WITHIN_TOLERANCE),
        (10, 4, Reason.STABILIZING),
        (20, 4, Reason.STABILIZING),
        (299, 4, Reason.STABILIZING),
        (300, 2, Reason.STABILIZING),
        (310, 0, Reason.IDLE),
        (320, 0, Reason.IDLE),
        (330, 4, Reason.ACTIVATION),
        (331, 4, Reason.LOAD),
    ]


# --- deletion cost ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "cost"),
    [(0, 0), (None, 1), (1, 2), (5, 6)],
    ids=["idle goes first", "unknown", "one task", "five tasks"],
)
def test_deletion_cost(held: int | None, cost: int) -> None:
    assert scaling.deletion_cost(held) == cost
