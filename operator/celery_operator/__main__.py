"""``python -m celery_operator``: run the operator (``kopf run -m celery_operator.handlers``
works too, with settings from the environment only)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import kopf

from celery_operator import handlers
from celery_operator.settings import Settings, from_env


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
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = parse_args(sys.argv[1:] if argv is None else argv, from_env())
    except ValueError as error:
        sys.exit(f"celery-operator: {error}")
    kopf.configure(
        verbose=settings.verbose,
        log_format=kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL,
    )
    liveness = (
        f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    )
    assert handlers.start  # the handlers register with Kopf on import
    kopf.run(
        standalone=True,  # one replica with the Recreate strategy; peering is no leader election
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness,
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()
