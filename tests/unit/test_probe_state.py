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
        (
            _with(connected=False, disconnected_at=NOW - 31),
            False,
            "disconnected for 31s (grace 30s)",
        ),
        # A clock reading before the stamp (it cannot go backwards, but a file can be edited).
        (_with(heartbeat=NOW + 3), True, "heartbeat 0.0s ago"),
    ],
)
def test_worker_liveness(state: ps.State | None, ok: bool, says: str) -> None:
    verdict = ps.worker_liveness(state, NOW, max_age=5, broker_grace=30)
    assert (verdict.ok, says in verdict.message) == (ok, True), verdict


class Broker:
    """A broker check with a fixed answer that counts how often the verdict asked it."""

    def __init__(self, answered: bool, found: str) -> None:
        self.answer = (answered, found)
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.answer


UP = (True, "redis://redis.ns.svc:6379 answered")
DOWN = (False, "redis://redis.ns.svc:6379: connection refused")
LOST = _with(connected=False, disconnected_at=NOW - 31, consuming=[])


@pytest.mark.parametrize(
    ("state", "broker", "ok", "says", "asked"),
    [
        pytest.param(
            LOST, DOWN, True,
            "broker unreachable from this pod too (redis://redis.ns.svc:6379: connection refused):"
            " waiting for it, not restarting",
            1, id="down-for-everyone-passes",
        ),
        pytest.param(
            LOST, UP, False,
            "broker answers but this worker has been disconnected for 31s (grace 30s):"
            " redis://redis.ns.svc:6379 answered",
            1, id="cut-off-alone-fails",
        ),
        pytest.param(
            _with(connected=False, disconnected_at=NOW - 29), UP, True, "reconnecting", 0,
            id="within-the-grace-nobody-is-asked",
        ),
        pytest.param(HEALTHY, UP, True, "main loop alive", 0, id="healthy-path-never-asks"),
        pytest.param(
            _with(heartbeat=NOW - 9), DOWN, False, "no heartbeat", 0,
            id="a-stopped-loop-fails-whatever-the-broker",
        ),
        pytest.param(
            {**LOST, "shutting_down": True}, UP, True, "warm shutdown", 0,
            id="warm-shutdown-never-asks",
        ),
    ],
)  # fmt: skip
def test_worker_liveness_asks_the_broker_only_past_the_grace(
    state: ps.State, broker: tuple[bool, str], ok: bool, says: str, asked: int
) -> None:
    check = Broker(*broker)
    verdict = ps.worker_liveness(state, NOW, max_age=5, broker_grace=30, broker=check)
    assert (verdict.ok, says in verdict.message, check.calls) == (ok, True, asked), verdict


def test_readiness_stays_false_while_disconnected_whatever_the_broker() -> None:
    for state in (LOST, _with(connected=False, disconnected_at=NOW - 1)):
        verdict = ps.worker_readiness(state, NOW, max_age=5)
        assert (verdict.ok, verdict.message) == (False, "broker connection lost: consuming nothing")


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


LATE = {"last_tick": NOW - 40, "next_tick_in": 5.0}


@pytest.mark.parametrize(
    ("state", "broker", "ok", "says", "asked"),
    [
        pytest.param(
            LATE, DOWN, True,
            "broker unreachable from this pod too (redis://redis.ns.svc:6379: connection refused)",
            1, id="tick-stuck-on-a-broker-down-for-everyone-passes",
        ),
        pytest.param(
            LATE, UP, False,
            "scheduler loop stalled: last tick 40s ago, the next was due 35s ago (grace 15s);"
            " the broker answers: redis://redis.ns.svc:6379 answered",
            1, id="late-while-the-broker-answers-fails",
        ),
        pytest.param(
            {"last_tick": NOW - 4, "next_tick_in": 5.0}, UP, True, "ticking", 0,
            id="on-time-never-asks",
        ),
        pytest.param({"kind": "beat"}, DOWN, False, "not ticked yet", 0, id="never-ticked"),
    ],
)  # fmt: skip
def test_beat_liveness_asks_the_broker_when_late(
    state: ps.State, broker: tuple[bool, str], ok: bool, says: str, asked: int
) -> None:
    check = Broker(*broker)
    verdict = ps.beat_liveness(state, NOW, grace=15, broker=check)
    assert (verdict.ok, says in verdict.message, check.calls) == (ok, True, asked), verdict


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
        (["beat-live", "--broker-timeout", "1"], ("beat-live", {"broker-timeout": "1"}, [])),
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
        (["worker-ready", "--broker-timeout", "1"], "worker-ready has no option --broker-t"),
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


def test_the_broker_check_reads_the_url_from_the_environment_only_when_called() -> None:
    environ: dict[str, str] = {}
    check = cli.broker_check({"broker-timeout": "0.5"}, environ)
    environ["CELERY_BROKER_URL"] = "memory://"
    assert check() == (False, "the broker URL (memory) has no usable host and port")
    assert cli.broker_check({}, {})() == (False, "no broker URL in $CELERY_BROKER_URL")


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_broker_timeout_must_be_positive_seconds(value: str) -> None:
    with pytest.raises(cli.UsageError, match="--broker-timeout must be"):
        cli.broker_check({"broker-timeout": value})
