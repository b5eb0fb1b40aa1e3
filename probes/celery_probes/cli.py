"""``celery-probe``: the checks the kubelet runs, and the launcher that makes them possible.

    celery-probe run -A proj worker ...       run Celery with the probe hooks (any celery arguments)
    celery-probe worker-live [--max-age S] [--broker-grace S]
                                              worker liveness
    celery-probe worker-ready [--queues a,b]  worker readiness
    celery-probe beat-live [--grace S]        beat liveness
    celery-probe show worker|beat             print the state file

A check prints one line and exits 0 (pass) or 1 (fail). Checks import only the standard library;
``run`` imports Celery, lazily, so the checks never pay for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from celery_probes import state as probe_state

CHECKS = ("worker-live", "worker-ready", "beat-live")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "run":
        from celery_probes import hooks  # noqa: PLC0415 (Celery is for the launcher only)

        return hooks.run_celery(args[1:])
    options = _parser().parse_args(args)
    directory = options.dir or probe_state.state_dir()
    if options.command == "show":
        name = probe_state.WORKER_FILE if options.what == "worker" else probe_state.BEAT_FILE
        print(json.dumps(probe_state.read_state(os.path.join(directory, name)), indent=2))
        return 0
    verdict = check(options.command, directory, options, time.monotonic())
    print(("ok: " if verdict.ok else "FAIL: ") + verdict.message)
    return 0 if verdict.ok else 1


def check(
    command: str, directory: str, options: argparse.Namespace, now: float
) -> probe_state.Verdict:
    """Run one check against the state in ``directory``."""
    if command == "beat-live":
        beat = probe_state.read_state(os.path.join(directory, probe_state.BEAT_FILE))
        return probe_state.beat_liveness(beat, now, options.grace)
    worker = probe_state.read_state(os.path.join(directory, probe_state.WORKER_FILE))
    if command == "worker-live":
        return probe_state.worker_liveness(worker, now, options.max_age, options.broker_grace)
    expected = [q for q in options.queues.split(",") if q] if options.queues else None
    return probe_state.worker_readiness(worker, now, options.max_age, expected)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celery-probe", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in (*CHECKS, "show"):
        sub = commands.add_parser(name)
        sub.add_argument(
            "--dir",
            help=f"state directory (default ${probe_state.STATE_DIR_ENV} or "
            f"{probe_state.DEFAULT_STATE_DIR})",
        )
        if name == "show":
            sub.add_argument("what", choices=("worker", "beat"))
        if name.startswith("worker"):
            sub.add_argument(
                "--max-age",
                type=float,
                default=probe_state.DEFAULT_MAX_AGE_SECONDS,
                help="seconds without a heartbeat before the main loop counts as stopped",
            )
        if name == "worker-live":
            sub.add_argument(
                "--broker-grace",
                type=float,
                default=probe_state.DEFAULT_BROKER_GRACE_SECONDS,
                help="seconds the broker connection may be lost before the worker counts as dead",
            )
        if name == "worker-ready":
            sub.add_argument(
                "--queues",
                help="comma-separated queues that must be consumed "
                "(default: those the worker started with)",
            )
        if name == "beat-live":
            sub.add_argument(
                "--grace",
                type=float,
                default=probe_state.DEFAULT_BEAT_GRACE_SECONDS,
                help="seconds beat's next tick may be late",
            )
    return parser


if __name__ == "__main__":
    sys.exit(main())
