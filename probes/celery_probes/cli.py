"""``celery-probe``: the checks the kubelet runs, and the launcher that makes them possible.

    celery-probe run -A proj worker ...     run Celery with the probe hooks (any celery arguments)
    celery-probe worker-live [--max-age S] [--broker-grace S] [--broker-timeout S]
                                            worker liveness
    celery-probe worker-ready [--max-age S] [--queues a,b]
                                            worker readiness
    celery-probe beat-live [--grace S] [--broker-timeout S]
                                            beat liveness
    celery-probe show worker|beat           print the state file

Defaults: --max-age 5 (seconds without a heartbeat), --broker-grace 30 (seconds without the
broker before the check tries it), --queues those the worker started with, --grace 15 (seconds
beat's next tick may be late), --broker-timeout 2 (seconds to try the broker at
$CELERY_BROKER_URL, when the state says something is wrong: keep it below the probe's
timeoutSeconds). Every check also takes --dir (default $CELERY_PROBE_DIR, else
/tmp/celery-probe).

A check prints one line and exits 0 (pass) or 1 (fail), or 2 for a command line it does not
understand. Checks import only the standard library;
``run`` imports Celery, lazily, so the checks never pay for it.
"""

from __future__ import annotations

import json
import os
import sys
import time

from celery_probes import state as probe_state

CHECKS = ("worker-live", "worker-ready", "beat-live")
BROKER_TIMEOUT_SECONDS = 2.0
"""Seconds for trying the broker (``brokercheck.DEFAULT_TIMEOUT_SECONDS``, not imported here)."""


USAGE = __doc__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "run":
        from celery_probes import hooks  # noqa: PLC0415 (Celery is for the launcher only)

        return hooks.run_celery(args[1:])
    try:
        command, options, positional = parse(args)
        if command == "help":
            print(USAGE)
            return 0
        directory = options.get("dir") or probe_state.state_dir()
        if command == "show":
            name = probe_state.BEAT_FILE if positional == ["beat"] else probe_state.WORKER_FILE
            print(json.dumps(probe_state.read_state(os.path.join(directory, name)), indent=2))
            return 0
        verdict = check(command, directory, options, time.monotonic())
    except UsageError as error:
        print(f"celery-probe: {error}\n{USAGE}", file=sys.stderr)
        return 2
    print(("ok: " if verdict.ok else "FAIL: ") + verdict.message)
    return 0 if verdict.ok else 1


class UsageError(ValueError):
    """A command line the checks do not understand."""


OPTIONS: dict[str, tuple[str, ...]] = {
    "worker-live": ("dir", "max-age", "broker-grace", "broker-timeout"),
    "worker-ready": ("dir", "max-age", "queues"),
    "beat-live": ("dir", "grace", "broker-timeout"),
    "show": ("dir",),
}
"""The options of each check. Parsed by hand: ``argparse`` alone would add 5-8 ms to every run."""


def parse(args: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """(command, ``--name value`` options, positional arguments) of a check's command line."""
    if not args or args[0] in ("-h", "--help", "help"):
        return "help", {}, []
    command, rest = args[0], args[1:]
    if command not in OPTIONS:
        raise UsageError(f"unknown command {command!r}")
    options: dict[str, str] = {}
    positional: list[str] = []
    while rest:
        word = rest.pop(0)
        if word in ("-h", "--help"):
            return "help", {}, []
        if not word.startswith("--"):
            positional.append(word)
            continue
        name, equals, value = word[2:].partition("=")
        if name not in OPTIONS[command]:
            raise UsageError(f"{command} has no option --{name}")
        if not equals:
            if not rest:
                raise UsageError(f"--{name} needs a value")
            value = rest.pop(0)
        options[name] = value
    if command == "show" and positional not in (["worker"], ["beat"]):
        raise UsageError("show needs one argument: worker or beat")
    if command != "show" and positional:
        raise UsageError(f"unexpected argument {positional[0]!r}")
    return command, options, positional


def _seconds(options: dict[str, str], name: str, default: float) -> float:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"--{name} must be a number of seconds, not {raw!r}") from None


def broker_check(
    options: dict[str, str], environ: dict[str, str] | None = None
) -> probe_state.BrokerCheck:
    """Tries the broker at ``$CELERY_BROKER_URL`` when called: the verdict calls it only when the
    state says something is wrong, so the healthy path never imports the broker check."""
    timeout = _seconds(options, "broker-timeout", BROKER_TIMEOUT_SECONDS)
    if not timeout > 0:
        raise UsageError("--broker-timeout must be more than 0 seconds")
    env = os.environ if environ is None else environ

    def try_broker() -> tuple[bool, str]:
        from celery_probes import brokercheck  # noqa: PLC0415 (only when the state needs it)

        return brokercheck.try_broker(env.get(brokercheck.URL_ENV, ""), timeout, environ=env)

    return try_broker


def check(command: str, directory: str, options: dict[str, str], now: float) -> probe_state.Verdict:
    """Run one check against the state in ``directory``."""
    if command == "beat-live":
        beat = probe_state.read_state(os.path.join(directory, probe_state.BEAT_FILE))
        grace = _seconds(options, "grace", probe_state.DEFAULT_BEAT_GRACE_SECONDS)
        return probe_state.beat_liveness(beat, now, grace, broker_check(options))
    worker = probe_state.read_state(os.path.join(directory, probe_state.WORKER_FILE))
    max_age = _seconds(options, "max-age", probe_state.DEFAULT_MAX_AGE_SECONDS)
    if command == "worker-live":
        grace = _seconds(options, "broker-grace", probe_state.DEFAULT_BROKER_GRACE_SECONDS)
        return probe_state.worker_liveness(worker, now, max_age, grace, broker_check(options))
    queues = options.get("queues")
    expected = [q for q in queues.split(",") if q] if queues else None
    return probe_state.worker_readiness(worker, now, max_age, expected)


if __name__ == "__main__":
    sys.exit(main())
