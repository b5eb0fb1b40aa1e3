"""``python -m celery_operator``: run the operator (``kopf run -m celery_operator.handlers``
works too, with settings from the environment only).

With ``--leader-elect`` the process is one of several replicas: it first waits for the leader
Lease (``leader.LeaderElector``), serving only ``/healthz`` and ``/metrics`` meanwhile, and starts
Kopf only once it holds the Lease, so that a standby makes no write at all. A leader that cannot
renew the Lease for the renew deadline exits at once, before the Lease expires for the others;
one stopped with SIGTERM stops Kopf gracefully, then releases the Lease for a standby to take.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence

import kopf
import prometheus_client

from celery_operator import handlers
from celery_operator.election import Timings
from celery_operator.kube import load_api_client
from celery_operator.leader import LeaderElector, StandbyHealth, lease_api
from celery_operator.settings import Settings, from_env

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str], base: Settings) -> Settings:
    parser = argparse.ArgumentParser(
        prog="celery-operator",
        description="Run the celery-operator. Every flag has a CELERY_OPERATOR_* variable too.",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NAMESPACE",
        help="watch this namespace (repeat for several; globs like 'team-*' work)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (default)"
    )
    parser.add_argument("--reconcile-interval", type=float, metavar="SECONDS")
    parser.add_argument("--liveness-port", type=int, metavar="PORT", help="0 turns it off")
    parser.add_argument("--log-format", choices=("text", "json"))
    parser.add_argument(
        "--leader-elect",
        action="store_true",
        default=None,
        help="one of several replicas: reconcile only while holding the leader Lease",
    )
    parser.add_argument("--lease-name", metavar="NAME", help="default: celery-operator")
    parser.add_argument("--lease-namespace", metavar="NAMESPACE", help="default: $POD_NAMESPACE")
    parser.add_argument("-v", "--verbose", action="store_true", default=None)
    args = parser.parse_args(argv)
    changes: dict[str, object] = {}
    if args.namespaces:
        changes["namespaces"] = tuple(args.namespaces)
    if args.all_namespaces:
        changes["namespaces"] = ()
    if args.reconcile_interval is not None:
        changes["reconcile_interval_seconds"] = args.reconcile_interval
    if args.liveness_port is not None:
        changes["liveness_port"] = args.liveness_port
    if args.log_format is not None:
        changes["log_format"] = args.log_format
    if args.verbose:
        changes["verbose"] = True
    if args.leader_elect:
        changes["leader_elect"] = True
    if args.lease_name is not None:
        changes["lease_name"] = args.lease_name
    if args.lease_namespace is not None:
        changes["lease_namespace"] = args.lease_namespace
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def election_timings(settings: Settings) -> Timings:
    """The Lease's timings; a ValueError when they could let two processes lead at once."""
    try:
        timings = Timings(
            lease_duration=settings.lease_duration_seconds,
            renew_deadline=settings.renew_deadline_seconds,
            retry_period=settings.retry_period_seconds,
        )
    except ValueError as error:
        raise ValueError(f"leader election: {error}") from None
    if not settings.lease_namespace:
        raise ValueError("--leader-elect needs --lease-namespace or $POD_NAMESPACE")
    return timings


def identity(environ: Mapping[str, str] = os.environ) -> str:
    """The pod's name (else the host's) and a random suffix: a restarted container is a new
    candidate, never taken for the holder its previous run was."""
    return f"{environ.get('POD_NAME') or socket.gethostname()}_{secrets.token_hex(4)}"


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = parse_args(sys.argv[1:] if argv is None else argv, from_env())
        timings = election_timings(settings) if settings.leader_elect else None
    except ValueError as error:
        sys.exit(f"celery-operator: {error}")
    kopf.configure(
        verbose=settings.verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
    )
    if not settings.verbose:
        # One line per kubelet probe of /healthz (every 5 s in a pod) buries the operator's own.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    liveness = (
        f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    )
    assert handlers.start  # the handlers register with Kopf on import
    stop = threading.Event()
    elector = None
    if timings is not None:
        elector = stand_by(settings, timings, stop)
        if elector is None:
            return
        settings = dataclasses.replace(settings, metrics_port=0)  # served since the standby
    try:
        run_kopf(settings, liveness, stop)
    finally:
        if elector is not None:
            elector.release()


def run_kopf(settings: Settings, liveness: str | None, signalled: threading.Event) -> None:
    """``kopf.run(...)``, and a SIGTERM that came before Kopf put its own signal handlers in
    place (``signalled``, set by the standby's handler) sent again once they are. Not through
    Kopf's ``stop_flag``: Kopf leaves its waiter for the flag pending when a signal stops it, and
    waits 5 s for that "hung" task (a threading.Event even blocks its exit until its ultimate
    SIGKILL, 10 minutes later)."""

    async def operate() -> None:
        ready = asyncio.Event()

        async def resend() -> None:
            await ready.wait()  # set once Kopf has started, its signal handlers in place
            if signalled.is_set():
                os.kill(os.getpid(), signal.SIGTERM)

        resending = asyncio.create_task(resend())
        await kopf.operator(
            standalone=True,  # Kopf's peering is no leader election: the Lease is (--leader-elect)
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=liveness,
            memo=kopf.Memo(settings=settings),
            ready_flag=ready,
        )
        resending.cancel()

    with contextlib.suppress(asyncio.CancelledError):  # as kopf.run
        asyncio.run(operate())


def stand_by(settings: Settings, timings: Timings, stop: threading.Event) -> LeaderElector | None:
    """Wait for the Lease, serving ``/healthz`` and ``/metrics`` (so that the standby's target
    is up too), and renew it from then on; None when stopped (SIGTERM) while standing by."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port)
    elector = LeaderElector(
        lease_api(load_api_client()),
        namespace=settings.lease_namespace,
        name=settings.lease_name,
        identity=identity(),
        timings=timings,
        on_lost=exit_at_once,
        request_timeout=min(settings.api_timeout_seconds, timings.renew_deadline),
    )
    health = (
        StandbyHealth(settings.liveness_port, elector)
        if settings.liveness_port
        else contextlib.nullcontext()
    )
    with health:
        if not elector.acquire(stop):
            log.info("stopped while standing by")
            return None
    elector.start_renewing()
    return elector


def exit_at_once(reason: str) -> None:
    """The leader lost the Lease: stop reconciling now, before it expires for the others (a
    graceful stop could outlast that). The kubelet restarts the container, as a standby."""
    log.critical("exiting: no longer the leader (%s)", reason)
    os._exit(1)


if __name__ == "__main__":
    main()
