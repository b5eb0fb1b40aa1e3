"""The hung-worker monitor's decisions over several cycles, with scripted census answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from celery_operator.health import (
    BROKER_UNREACHABLE,
    MASS_UNRESPONSIVE,
    HealthReport,
    Kind,
    Reply,
    WorkerPod,
)
from celery_operator.monitor import HealthMonitor, kubelet_window
from celery_operator.remote import WorkersUnreachable
from celery_operator.spec import parse_cluster
from tests.unit.samples import minimal_spec, with_changes

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
KEY = ("apps", "demo")
OK = Reply(processed=1, slots=2)


class ScriptedCensus:
    """Answers each cycle from a script: a mapping of pod name to reply, or an exception."""

    def __init__(self) -> None:
        self.answer: Mapping[str, Reply] | Exception = {}
        self.calls: list[list[str]] = []

    def __call__(self, nodes: Sequence[str]) -> dict[str, Reply]:
        self.calls.append(list(nodes))
        if isinstance(self.answer, Exception):
            raise self.answer
        return {f"default@{pod}": r for pod, r in self.answer.items() if f"default@{pod}" in nodes}


def _pods(count: int, **changes: Any) -> list[WorkerPod]:
    base: dict[str, Any] = {
        "uid": "u",
        "pool": "default",
        "running": True,
        "ready": True,
        "terminating": False,
        "age": timedelta(hours=1),
    }
    base.update(changes)
    return [WorkerPod(name=f"w{i}", **base) for i in range(count)]


def _spec(probes: bool = False, **hung: Any) -> Any:
    """Without liveness probes unless asked: then the monitor alone handles silent workers."""
    raw = with_changes(minimal_spec(), "workers.0.replicas", 8)
    raw = with_changes(raw, "probes", {"enabled": probes})
    return parse_cluster("demo", with_changes(raw, "workers.0.hungWorkers", hung))


def _cycles(
    monitor: HealthMonitor,
    census: ScriptedCensus,
    answers: list[Mapping[str, Reply] | Exception],
    pods: list[WorkerPod],
    spec: Any = None,
    recent: Mapping[str, list[tuple[str, datetime]]] | None = None,
) -> list[HealthReport]:
    reports = []
    for index, answer in enumerate(answers):
        census.answer = answer
        reports.append(
            monitor.cycle(
                KEY,
                spec or _spec(),
                census,
                pods,
                {"default": 0},
                recent or {},
                T0 + timedelta(seconds=10 * index),
            )
        )
    return reports


def test_a_silent_worker_is_restarted_after_three_cycles_and_others_are_not() -> None:
    census = ScriptedCensus()
    monitor = HealthMonitor(interval=10)
    pods = _pods(4)
    everyone = {p.name: OK for p in pods}
    without_w2 = {k: v for k, v in everyone.items() if k != "w2"}
    reports = _cycles(monitor, census, [everyone, without_w2, without_w2, without_w2], pods)
    assert [len(r.restarts) for r in reports] == [0, 0, 0, 1]
    [restart] = reports[-1].restarts
    assert (restart.pod, restart.verdict.kind) == ("w2", Kind.UNRESPONSIVE)
    # One census per cycle, addressed to every running pod's node name.
    assert census.calls == [[f"default@w{i}" for i in range(4)]] * 4
    assert (reports[-1].pools[0].answering, reports[-1].pools[0].checked) == (3, 4)


def test_broker_unreachable_judges_nobody_and_counts_no_misses() -> None:
    census = ScriptedCensus()
    monitor = HealthMonitor(interval=10)
    pods = _pods(3)
    everyone = {p.name: OK for p in pods}
    down = WorkersUnreachable("connection refused")
    reports = _cycles(monitor, census, [everyone, down, down, down, down, everyone], pods)
    assert [r.guard for r in reports] == [None, *[BROKER_UNREACHABLE] * 4, None]
    assert "restarting nobody" in reports[1].message
    assert not any(r.restarts for r in reports)
    assert all(not pool.hung for pool in reports[-1].pools)


def test_most_workers_silent_at_once_is_a_mass_failure_not_hung_workers() -> None:
    census = ScriptedCensus()
    monitor = HealthMonitor(interval=10)
    pods = _pods(4)
    everyone = {p.name: OK for p in pods}
    one_left = {"w0": OK}
    reports = _cycles(monitor, census, [everyone, *[one_left] * 5, everyone], pods)
    assert [r.guard for r in reports[1:6]] == [MASS_UNRESPONSIVE] * 5
    assert "3 of 4 workers stopped answering at once" in reports[1].message
    assert not any(r.restarts for r in reports)
    assert reports[-1].guard is None


def test_budget_limits_restarts_at_once_and_per_window() -> None:
    census = ScriptedCensus()
    monitor = HealthMonitor(interval=10)
    pods = _pods(8)
    everyone = {p.name: OK for p in pods}
    # Three of eight fall silent one cycle apart (not at once: no mass failure).
    answers: list[Mapping[str, Reply] | Exception] = [
        everyone,
        {k: v for k, v in everyone.items() if k != "w5"},
        {k: v for k, v in everyone.items() if k not in ("w5", "w6")},
        *[{k: v for k, v in everyone.items() if k not in ("w5", "w6", "w7")}] * 4,
    ]
    spec = _spec(maxRestarts=3, maxUnavailablePercent=25)
    recent = {"default": [("w-gone", T0 - timedelta(seconds=60))]}  # one already in the window
    reports = _cycles(monitor, census, answers, pods, spec=spec, recent=recent)
    restarted = [r.pod for report in reports for r in report.restarts]
    # 25 % of 8 = 2 at once, and 3 per window minus the one already made = 2.
    assert restarted == ["w5", "w6"]
    assert [v.pod for v in reports[-1].pools[0].held] == ["w7"]
    assert monitor.newly_held(KEY, reports[-1]) == list(reports[-1].pools[0].held)
    assert monitor.newly_held(KEY, reports[-1]) == []  # one Event per verdict, not per cycle


def test_observe_mode_reports_but_restarts_nothing() -> None:
    census = ScriptedCensus()
    monitor = HealthMonitor(interval=10)
    pods = _pods(2)
    answers: list[Mapping[str, Reply] | Exception] = [{"w0": OK, "w1": OK}, *[{"w0": OK}] * 3]
    reports = _cycles(monitor, census, answers, pods, spec=_spec(action="Observe"))
    assert not any(r.restarts for r in reports)
    assert [v.pod for v in reports[-1].pools[0].held] == ["w1"]


def test_pending_and_terminating_pods_are_not_judged_and_off_asks_nobody() -> None:
    census = ScriptedCensus()
    monitor = HealthMonitor(interval=10)
    pods = [*_pods(1), *_pods(1, running=False), *_pods(1, terminating=True)]
    pods = [WorkerPod(f"p{i}", p.uid, p.pool, p.running, p.ready, p.terminating, p.age)
            for i, p in enumerate(pods)]  # fmt: skip
    reports = _cycles(monitor, census, [{"p0": OK}] * 4, pods)
    assert census.calls == [["default@p0"]] * 4  # only the running pod is asked
    assert not any(r.restarts for r in reports)
    census.calls.clear()
    _cycles(HealthMonitor(interval=10), census, [{}], pods, spec=_spec(action="Off"))
    assert census.calls == []


def test_due_once_per_interval() -> None:
    census = ScriptedCensus()
    monitor = HealthMonitor(interval=10)
    assert monitor.due(KEY, T0)
    _cycles(monitor, census, [{"w0": OK}], _pods(1))
    assert not monitor.due(KEY, T0 + timedelta(seconds=9))
    assert monitor.due(KEY, T0 + timedelta(seconds=10))
    monitor.forget(KEY)
    assert monitor.last(KEY) is None


def test_after_an_outage_late_reconnects_are_not_judged_for_a_minute() -> None:
    census = ScriptedCensus()
    monitor = HealthMonitor(interval=10)
    pods = _pods(3)
    everyone = {p.name: OK for p in pods}
    late = {"w0": OK, "w1": OK}  # w2 reconnects on a longer backoff
    down = WorkersUnreachable("refused")
    # Cycles every 10 s: outage at 10 s, back at 20 s; w2 silent until 80 s.
    reports = _cycles(monitor, census, [everyone, down, *[late] * 6, late, late, late], pods)
    restarted = [(i, r.pod) for i, report in enumerate(reports) for r in report.restarts]
    # Quiet until 10 + 60 = 70 s: misses count from the cycle at 70 s, the third at 90 s.
    assert restarted == [(9, "w2")]


def test_with_liveness_probes_a_silence_is_left_to_the_kubelet_first() -> None:
    census = ScriptedCensus()
    monitor = HealthMonitor(interval=10)
    pods = _pods(3)
    spec = _spec(probes=True)
    window = kubelet_window(spec)
    assert window == 5 + 10 * 3 + 10 + 20  # heartbeat, 3 failures 10 s apart, kill grace, restart
    everyone = {p.name: OK for p in pods}
    without_w1 = {"w0": OK, "w2": OK}
    reports = _cycles(monitor, census, [everyone, *[without_w1] * 9], pods, spec=spec)
    restarted = [(i, r.pod) for i, report in enumerate(reports) for r in report.restarts]
    # Silent from the cycle at 10 s: three misses by 30 s, but 65 s of silence only at 80 s.
    assert restarted == [(8, "w1")]
    assert "the kubelet may restart it" in monitor_evidence(reports[3], "w1")
    assert kubelet_window(_spec(probes=False)) == 0


def monitor_evidence(report: HealthReport, pod: str) -> str:
    return (
        "the kubelet may restart it"
        if not any(v.pod == pod for pool in report.pools for v in pool.hung)
        else "hung"
    )
