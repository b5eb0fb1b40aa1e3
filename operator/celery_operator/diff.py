"""Desired versus live: what to write so the live children match the spec (pure).

A child is left untouched when every field the operator sets already holds the desired value in
the live object ("desired is a subset of live", as KEDA compares) and it carries the hash of the
current desired object. The first test catches hand edits of owned fields; the second catches
spec changes that only remove something, which a subset test cannot see. Anything else on the
live object (server defaults, other managers' fields) is ignored, so an unchanged cluster
reconciles with zero writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

from celery_operator import naming

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
_SUFFIX: Final[dict[str, Decimal]] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024**i) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)},
}


def parse_quantity(value: object) -> Decimal | None:
    """A Kubernetes quantity ("500m", "1Gi", 2) as a number; None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value)
    if not match:
        return None
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix[:1] in ("e", "E") and len(suffix) > 1:
            return Decimal(number + suffix)
        return Decimal(number) * _SUFFIX[suffix]
    except (InvalidOperation, KeyError):
        return None


def first_difference(desired: Any, live: Any, path: str = "") -> str | None:
    """The path of the first owned field whose live value differs; None when live matches.

    The API server omits false, zero and empty values (``omitempty``), so a desired falsy value
    matches a missing one; it normalises quantities ("0.5" is stored as "500m"), so values under
    ``resources`` compare as numbers.
    """
    if isinstance(desired, Mapping):
        if live is None:
            return None if not desired else path or "."
        if not isinstance(live, Mapping):
            return path or "."
        for key, value in desired.items():
            found = first_difference(value, live.get(key), f"{path}.{key}")
            if found is not None:
                return found
        return None
    if isinstance(desired, list):
        live_list = live if isinstance(live, list) else []
        if len(desired) != len(live_list):
            return path
        for index, (want, have) in enumerate(zip(desired, live_list, strict=True)):
            found = first_difference(want, have, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    if desired == live:
        return None
    if live is None and desired in (False, 0, ""):
        return None
    if ".resources." in path or ".requests." in path or ".limits." in path:
        want_q, have_q = parse_quantity(desired), parse_quantity(live)
        if want_q is not None and want_q == have_q:
            return None
    return path


Verb = Literal["create", "update", "delete"]


@dataclass(frozen=True)
class Action:
    """One write the reconcile must make, with the reason an Event or log line can show."""

    verb: Verb
    kind: str
    name: str
    reason: str
    body: Mapping[str, Any] | None = None


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def plan(
    desired: Sequence[Mapping[str, Any]],
    live: Iterable[Mapping[str, Any]],
    owner_uid: str,
) -> list[Action]:
    """The writes that turn ``live`` into ``desired``: none when they already match.

    Only live objects controlled by ``owner_uid`` are ever deleted; a same-named object that
    belongs to someone else is reported as a conflict by the caller, not overwritten here.
    """
    live_by_key = {_key(obj): obj for obj in live}
    actions: list[Action] = []
    for want in desired:
        kind, name = _key(want)
        have = live_by_key.pop((kind, name), None)
        if have is None:
            actions.append(Action("create", kind, name, "missing", want))
            continue
        if have["metadata"].get("deletionTimestamp"):
            continue  # being replaced: create it anew once the old one (and its pods) are gone
        want_hash = want["metadata"]["annotations"][naming.SPEC_HASH_ANNOTATION]
        have_hash = (have["metadata"].get("annotations") or {}).get(naming.SPEC_HASH_ANNOTATION)
        if want_hash != have_hash:
            actions.append(Action("update", kind, name, "spec changed", want))
            continue
        drifted = first_difference(want, have)
        if drifted is not None:
            actions.append(Action("update", kind, name, f"drift at {drifted.lstrip('.')}", want))
    for (kind, name), have in live_by_key.items():
        if is_controlled_by(have, owner_uid) and not have["metadata"].get("deletionTimestamp"):
            actions.append(Action("delete", kind, name, "no longer in spec"))
    return actions


def is_controlled_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid and ref.get("controller") for ref in refs)


def stuck_beat_pod(
    statefulset: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]]
) -> str | None:
    """The beat pod to delete so that a stuck rollout can go on, or None.

    A StatefulSet never replaces a pod of an old revision that is not Ready: a beat that crashes
    on start keeps crashing after its spec is fixed (kubernetes/kubernetes#67250). Deleting such
    a pod is safe for the at-most-one rule: the controller creates the new one only once the old
    one is gone.
    """
    if statefulset is None:
        return None
    status = statefulset.get("status") or {}
    update = status.get("updateRevision")
    if not update or update == status.get("currentRevision"):
        return None
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        revision = (meta.get("labels") or {}).get("controller-revision-hash")
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (pod.get("status") or {}).get("conditions") or []
        )
        if revision and revision != update and not ready:
            return str(meta.get("name"))
    return None
