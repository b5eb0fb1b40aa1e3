"""The probes' verdicts as pure functions of a state and a clock reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_probes import cli
from celery_probes import state as ps

NOW = 1000.0

HEALTHY: ps.State = {
    "kind": "worker",
    "connected": True,
    "heartbeat": NOW - 1,
    "expected_queues": ["a", "b"],
    "consuming": ["a", "b"],
    "pool": "prefork",
}


def _with(**changes: object) -> ps.State:
    return {**HEALTHY, **changes}


@pytest.mark.parametrize(
    ("state", "ok", "says"),
    [
        (None, False, "no probe state yet"),
        ({"unreadable": "bad json"}, False, "unreadable: bad json"),
        (_with(heartbeat=None, connected=False), False, "has not started consuming"),
        (HEALTHY, True, "main loop alive (heartbeat 1.0s ago)"),
        (_with(heartbeat=NOW - 5), True, "main loop alive"),
        (_with(heartbeat=NOW - 5.5), False, "no heartbeat for 6s (limit 5s)"),
        (_with(heartbeat=NOW - 60, shutting_down=True), True, "warm shutdown"),
        (_with(heartbeat=NOW - 60, busy_since=NOW - 50), True, "running a task"),
        (_with(connected=False, disconnected_at=NOW - 10), True, "reconnecting"),
        (_with(connected=False, disconnected_at=NOW - 31), False, "lost 31s ago (grace 30s)"),
        # A clock reading before the stamp (it cannot go backwards, but a file can be edited).
        (_with(heartbeat=NOW + 3), True, "heartbeat 0.0s ago"),
    ],
)
def test_worker_liveness(state: ps.State | None, ok: bool, says: str) -> None:
    verdict = ps.worker_liveness(state, NOW, max_age=5, broker_grace=30)
    assert (verdict.ok, says in verdict.message) == (ok, True), verdict


@pytest.mark.parametrize(
    ("state", "expected", "ok", "says"),
    [
        (HEALTHY, None, True, "consuming a, b"),
        (_with(consuming=["a"]), None, False, "not consuming queue(s) b"),
        (HEALTHY, ["a", "b", "c"], False, "not consuming queue(s) c"),
        (_with(consuming=["a"]), ["a"], True, "consuming a"),
        (_with(shutting_down=True), None, False, "warm shutdown"),
        (_with(connected=False, disconnected_at=NOW - 1), None, False, "consuming nothing"),
        (_with(heartbeat=NOW - 9), None, False, "no heartbeat"),
        (_with(heartbeat=NOW - 9, busy_since=NOW - 9, pool="solo"), None, False, "busy"),
        (None, None, False, "no probe state"),
    ],
)
def test_worker_readiness(
    state: ps.State | None, expected: list[str] | None, ok: bool, says: str
) -> None:
    verdict = ps.worker_readiness(state, NOW, max_age=5, expected=expected)
    assert (verdict.ok, says in verdict.message) == (ok, True), verdict


@pytest.mark.parametrize(
    ("state", "ok", "says"),
    [
        ({"last_tick": NOW - 4, "next_tick_in": 5.0}, True, "last tick 4.0s ago"),
        ({"last_tick": NOW - 20, "next_tick_in": 5.0}, True, "ticking"),
        ({"last_tick": NOW - 20.5, "next_tick_in": 5.0}, False, "due 16s ago (grace 15s)"),
        # A scheduler that sleeps 300 s between ticks is not late at 200 s.
        ({"last_tick": NOW - 200, "next_tick_in": 300.0}, True, "ticking"),
        ({"kind": "beat"}, False, "not ticked yet"),
        (None, False, "no probe state"),
    ],
)
def test_beat_liveness(state: ps.State | None, ok: bool, says: str) -> None:
    verdict = ps.beat_liveness(state, NOW, grace=15)
    assert (verdict.ok, says in verdict.message) == (ok, True), verdict


def test_state_file_round_trip_and_torn_file(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "worker.json")
    ps.write_state(path, HEALTHY)
    assert ps.read_state(path) == HEALTHY
    assert list((tmp_path / "sub").iterdir()) == [tmp_path / "sub" / "worker.json"]
    Path(path).write_text('{"heartbeat": 1')
    assert "unreadable" in (ps.read_state(path) or {})
    Path(path).write_text("[1, 2]")
    assert ps.read_state(path) == {"unreadable": "not a JSON object"}
    assert ps.read_state(str(tmp_path / "missing.json")) is None


def test_state_dir_comes_from_the_environment() -> None:
    assert ps.state_dir({ps.STATE_DIR_ENV: "/run/x"}) == "/run/x"
    assert ps.state_dir({}) == ps.DEFAULT_STATE_DIR


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["worker-live"], ("worker-live", {}, [])),
        (
            ["worker-live", "--max-age", "3", "--broker-grace=0"],
            ("worker-live", {"max-age": "3", "broker-grace": "0"}, []),
        ),
        (["worker-ready", "--queues", "a,b"], ("worker-ready", {"queues": "a,b"}, [])),
        (["show", "beat", "--dir", "/x"], ("show", {"dir": "/x"}, ["beat"])),
        ([], ("help", {}, [])),
        (["beat-live", "--help"], ("help", {}, [])),
    ],
)
def test_check_command_lines(argv: list[str], expected: tuple[object, ...]) -> None:
    assert cli.parse(argv) == expected


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["worker-alive"], "unknown command 'worker-alive'"),
        (["worker-live", "--queues", "a"], "worker-live has no option --queues"),
        (["beat-live", "--grace"], "--grace needs a value"),
        (["show"], "show needs one argument"),
        (["worker-ready", "extra"], "unexpected argument 'extra'"),
    ],
)
def test_bad_command_lines_say_what_is_wrong(argv: list[str], says: str) -> None:
    with pytest.raises(cli.UsageError, match=says):
        cli.parse(argv)


def test_a_bad_number_exits_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["worker-live", "--max-age", "soon"]) == 2
    assert "--max-age must be a number of seconds, not 'soon'" in capsys.readouterr().err
