"""One reconcile of one CeleryCluster: a short list of named steps over one pass's findings.

The same reconcile runs on create, update, resume, child changes and a timer (level-triggered):
it never asks what happened, only what is and what should be. It writes nothing when the live
children and status already match, and it never deletes a running child because the spec is
wrong: a spec that cannot work leaves everything running and marks the cluster Degraded.

    1. read the spec              spec.py: typed, or InvalidSpec naming the field;
                                  then list the live children of the kinds that can exist
    2. resolve the broker         the Secrets: the broker URL (checked) and their digests
    3. attach the shared broker   brokers.py: one per broker; its polls and events for us
    4. apply the children         builders.py + diff.py: write what differs from the live ones
    5. read the broker            backlog, the oldest message of each queue, beat's last tick
    6. check the workers          monitor.py: one hung-worker cycle when due; restarts it orders
    7. write the status           status.py: status, Events on transitions, gauges

A cluster that is gone (or being deleted) is *released*: everything the operator held for it
(its place on a shared broker, the autoscaler's and the monitor's memory, its metric series)
goes, in :meth:`Reconciler.release`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from celery_operator import (
    GROUP,
    KIND,
    VERSION,
    brokerurl,
    builders,
    diff,
    health,
    metrics,
    naming,
    rabbitmq,
    status,
)
from celery_operator.autoscaler import Autoscaler, Target
from celery_operator.brokers import BrokerKey, Brokers, ClusterKey, SharedBroker
from celery_operator.eventstream import export_online
from celery_operator.health import HealthReport, WorkerPod
from celery_operator.kube import EventTarget, Kube, KubeError
from celery_operator.monitor import HealthMonitor, node_of
from celery_operator.queues import OldestMessages
from celery_operator.spec import ClusterSpec, SpecError, parse_cluster

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

SUPPORTED_BROKERS: Final = frozenset({"redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp"})
"""Broker URL schemes the operator can read (queue lengths, remote control, events)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outcome:
    """What a reconcile did: the loop logs it and tests assert on it."""

    found: bool
    writes: int = 0
    actions: tuple[diff.Action, ...] = ()
    phase: str = ""
    poll_in: float | None = None
    """Seconds until the autoscaler's next poll of this cluster; None when nothing autoscales
    (or every autoscaled pool idles at zero: then its broker wakes the loop)."""


@dataclass
class _Pass:
    """What one reconcile has found so far: each step reads it and adds to it."""

    key: ClusterKey
    resource: Mapping[str, Any]
    owner: builders.Owner
    target: EventTarget
    live: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    problems: list[status.Problem] = field(default_factory=list)
    spec: ClusterSpec | None = None
    broker_url: str | None = field(default=None, repr=False)
    broker_key: BrokerKey | None = None
    secret_digests: dict[str, str] = field(default_factory=dict)
    """Per component (``worker``, ``flower``): a keyed digest of the Secret values it reads."""
    broker: SharedBroker | None = None
    replicas: dict[str, int] = field(default_factory=dict)
    actions: list[diff.Action] = field(default_factory=list)
    queue_backlog: Mapping[str, int] | None = None
    queue_unacked: Mapping[str, int] | None = None
    broker_error: str | None = None
    health: HealthReport | None = None
    beat_failure: status.CreateFailure | None = None

    @property
    def applicable(self) -> bool:
        """Nothing stands in the way of carrying the spec out."""
        return self.spec is not None and self.broker is not None and not self.problems


class Reconciler:
    """Reconciles CeleryClusters through the Kube adapter and the shared brokers."""

    def __init__(
        self,
        kube: Kube,
        brokers: Brokers | None,
        clock: Clock = utcnow,
        monitor: HealthMonitor | None = None,
        autoscaler: Autoscaler | None = None,
    ) -> None:
        self.kube = kube
        self.brokers = brokers
        self.clock = clock
        self.monitor = monitor
        self.autoscaler = autoscaler
        self._oldest: dict[ClusterKey, OldestMessages] = {}
        self._kinds_seen: dict[ClusterKey, frozenset[str]] = {}
        """Per cluster, the kinds of children its last listing found."""

    # --- entry points --------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str) -> Outcome:
        key = (namespace, name)
        writes_before = self.kube.writes
        resource = self.kube.get_cluster(namespace, name)
        if resource is None or resource["metadata"].get("deletionTimestamp"):
            self.release(key)
            return Outcome(found=False)  # the garbage collector removes the children
        run = self._begin(key, resource)
        self._read_spec(run)
        self._list_children(run)
        self._resolve_broker(run)
        self._attach_broker(run)
        self._apply_children(run)
        self._read_broker(run)
        self._check_workers(run)
        try:
            phase = self._write_status(run)
        except KubeError as error:
            if not error.not_found:
                raise
            # Deleted during this pass: what it made goes with it (the garbage collector), and
            # so does what the operator holds for it. Not an error to retry.
            self.release(key)
            return Outcome(found=False, writes=self.kube.writes - writes_before)
        return Outcome(
            found=True,
            writes=self.kube.writes - writes_before,
            actions=tuple(run.actions),
            phase=phase,
            poll_in=self.autoscaler.next_poll(key) if self.autoscaler else None,
        )

    def autoscale(self, namespace: str, name: str) -> Outcome:
        """One autoscaler poll of the cluster, between two reconciles."""
        if self.autoscaler is None:
            return Outcome(found=True)
        writes_before = self.kube.writes
        key = (namespace, name)
        self.autoscaler.tick(key)
        return Outcome(
            found=True,
            writes=self.kube.writes - writes_before,
            poll_in=self.autoscaler.next_poll(key),
        )

    def release(self, key: ClusterKey) -> None:
        """Let go of everything held for ``key``: its broker first (no thread of the broker
        touches its metrics afterwards), then the memory, then every metric series."""
        if self.brokers is not None:
            self.brokers.detach(key)
        if self.autoscaler is not None:
            self.autoscaler.forget(key)
        if self.monitor is not None:
            self.monitor.forget(key)
        self._oldest.pop(key, None)
        self._kinds_seen.pop(key, None)
        metrics.forget_cluster(*key)

    # --- the steps ---------------------------------------------------------------------------

    def _begin(self, key: ClusterKey, resource: Mapping[str, Any]) -> _Pass:
        namespace, name = key
        owner = builders.Owner(
            api_version=f"{GROUP}/{VERSION}",
            kind=KIND,
            name=name,
            namespace=namespace,
            uid=resource["metadata"]["uid"],
        )
        target = EventTarget(owner.api_version, KIND, name, namespace, owner.uid)
        return _Pass(key, resource, owner, target)

    def _read_spec(self, run: _Pass) -> None:
        """1. The spec as typed objects, or the problem that names the field to fix."""
        try:
            run.spec = parse_cluster(run.key[1], run.resource.get("spec") or {})
        except SpecError as error:
            run.problems.append(status.Problem(status.Reason.INVALID_SPEC, str(error)))

    def _list_children(self, run: _Pass) -> None:
        """The live children, of the kinds that can exist: a StatefulSet only with beat, a
        Service only with Flower, unless the last listing found one (to be deleted) or this
        is the first pass since the operator started."""
        namespace, name = run.key
        spec, seen = run.spec, self._kinds_seen.get(run.key)
        wanted = {"Deployment"}
        if spec is None or seen is None or spec.beat.enabled or "StatefulSet" in seen:
            wanted.add("StatefulSet")
        if spec is None or seen is None or spec.flower.enabled or "Service" in seen:
            wanted.add("Service")
        labels = naming.cluster_labels(name)
        for kind in sorted(wanted):
            for obj in self.kube.list_children(kind, namespace, labels):
                run.live[(kind, obj["metadata"]["name"])] = obj
        self._kinds_seen[run.key] = frozenset(kind for kind, _ in run.live)

    def _resolve_broker(self, run: _Pass) -> None:
        """2. The broker URL from its Secret, checked, and the digests of the Secret values
        each component reads (a changed value rolls the pods that read it)."""
        spec = run.spec
        if spec is None:
            return
        ref = spec.broker
        found = self._secret_value(
            run.key[0],
            "spec.broker.urlSecretRef",
            ref.secret_name,
            ref.secret_key,
            status.Reason.BROKER_SECRET_MISSING,
        )
        if isinstance(found, status.Problem):
            run.problems.append(found)
        else:
            uid, url = found
            extras = self._broker_extras(run.key[0], spec)
            try:
                address = brokerurl.parse(url)
                brokerurl.check_supported(address, SUPPORTED_BROKERS)
            except brokerurl.BrokerUrlError as error:  # its text never quotes the URL
                run.problems.append(
                    status.Problem(
                        status.Reason.BROKER_URL_INVALID,
                        f"spec.broker.urlSecretRef: the broker URL in Secret "
                        f"{ref.secret_name!r} key {ref.secret_key!r}: {error}",
                    )
                )
            else:
                mismatch = _broker_mismatch(address, spec)
                if mismatch is not None:
                    run.problems.append(mismatch)
                elif isinstance(extras, status.Problem):
                    run.problems.append(extras)
                else:
                    ca_data, management, ca_uid = extras
                    run.broker_key = BrokerKey.of(
                        url,
                        ref.keys,
                        master_name=ref.master_name,
                        ca_data=ca_data,
                        management=management,
                    )
                    run.broker_url = url
                    run.secret_digests[naming.WORKER] = _digest(uid + ca_uid, url + (ca_data or ""))
        if spec.flower.enabled:
            login = self._secret_value(
                run.key[0],
                "spec.flower.basicAuthSecretRef",
                spec.flower.secret_name,
                spec.flower.secret_key,
                status.Reason.FLOWER_SECRET_MISSING,
            )
            if isinstance(login, status.Problem):
                run.problems.append(login)
            elif naming.WORKER in run.secret_digests:
                uid, auth = login
                run.secret_digests[naming.FLOWER] = _digest(
                    uid, run.secret_digests[naming.WORKER] + auth
                )

    def _attach_broker(self, run: _Pass) -> None:
        """3. The cluster's place on its shared broker: the same object for every cluster on
        that broker; attaching to another one detaches from the old."""
        if self.brokers is None or run.spec is None or run.broker_key is None:
            return
        spec = run.spec
        run.broker = self.brokers.attach(run.key, run.broker_key)
        run.broker.subscribe_events(
            run.key, {q: p.name for p in reversed(spec.workers) for q in p.queues}
        )
        export_online(run.key, (p.name for p in spec.workers), run.broker.workers_online(run.key))

    def _apply_children(self, run: _Pass) -> None:
        """4. Build the desired children and write those that differ from the live ones."""
        spec = run.spec
        if spec is None or run.problems:
            self._track_autoscaling(run)
            return
        namespace, name = run.key
        if self.autoscaler is not None:
            pools = {
                pool.name: run.live.get(("Deployment", naming.worker_name(name, pool.name))) or {}
                for pool in spec.workers
            }
            run.replicas = self.autoscaler.replicas(run.key, spec, pools)
        desired = builders.desired_children(run.owner, spec, run.replicas, run.secret_digests)
        run.problems += self._name_conflicts(namespace, desired, run.live, run.owner.uid)
        if not run.problems:
            run.actions = diff.plan(desired, run.live.values(), run.owner.uid)
            run.problems += self._execute(run.actions, namespace, run.live, run.target)
            self._kinds_seen[run.key] = frozenset(kind for kind, _ in run.live)
            self._unstick_beat(namespace, name, run.live, run.target)
        self._track_autoscaling(run)

    def _track_autoscaling(self, run: _Pass) -> None:
        """Poll only what a reconcile could apply; else hold (a spec being fixed, a Secret
        being restored) until one can."""
        if self.autoscaler is None:
            return
        tracked = None
        if run.applicable and run.spec is not None and run.broker is not None:
            tracked = Target(run.spec, run.broker, run.target)
        self.autoscaler.track(run.key, tracked)

    def _read_broker(self, run: _Pass) -> None:
        """5. Messages waiting per queue (for status), the age of each queue's oldest message
        and beat's last tick (gauges). A broker that cannot be read is reported, never fatal."""
        spec, shared = run.spec, run.broker
        if spec is None or shared is None:
            return
        queues = sorted({q for pool in spec.workers for q in pool.queues})
        try:
            loads = shared.read_loads(queues)
            run.queue_backlog = {queue: load.waiting for queue, load in loads.items()}
            run.queue_unacked = {
                q: load.in_flight for q, load in loads.items() if load.in_flight is not None
            }
        except Exception as error:  # any broker failure: report it, never stop reconciling
            run.broker_error = brokerurl.redact(f"{type(error).__name__}: {error}", run.broker_url)
            return
        try:
            heads = shared.read_heads(queues)
            oldest = self._oldest.setdefault(run.key, OldestMessages())
            for queue, age in oldest.observe(heads, time.monotonic()).items():
                metrics.QUEUE_OLDEST_AGE.labels(*run.key, queue).set(age)
            if spec.beat.enabled:
                tick = shared.read_beat_tick()
                if tick is not None:
                    metrics.BEAT_LAST_TICK.labels(*run.key).set(tick)
        except Exception as error:  # the broker went away since the backlog read: next time
            log.info(
                "could not read the oldest messages or beat's tick of %s/%s: %s",
                *run.key,
                brokerurl.redact(str(error), run.broker_url),
            )

    def _check_workers(self, run: _Pass) -> None:
        """6. A hung-worker cycle when one is due (else the last one stands), and the restarts
        it orders: this step deletes pods."""
        spec, shared = run.spec, run.broker
        if self.monitor is None or spec is None or shared is None or not run.applicable:
            return
        key, now = run.key, self.clock()
        if not self.monitor.due(key, now):
            run.health = self.monitor.last(key)
            return
        namespace, name = key
        pods: list[WorkerPod] = []
        if _has_pods(run):  # a cluster whose pools are all at zero lists nothing
            selector = {naming.INSTANCE_LABEL: name, naming.COMPONENT_LABEL: naming.WORKER}
            pods = [_worker_pod(p, now) for p in self.kube.list_pods(namespace, selector)]
            shared.claim_nodes(key, [node_of(p) for p in pods])
        backlog = None
        if run.queue_backlog is not None:
            backlog = {
                pool.name: sum(run.queue_backlog.get(q, 0) for q in pool.queues)
                for pool in spec.workers
            }
        previous = run.resource.get("status") or {}
        report = self.monitor.cycle(
            key, spec, shared.census, pods, backlog, status.restart_times(previous), now
        )
        for restart in report.restarts:
            self._restart(run, restart, now)
        for verdict in self.monitor.newly_held(key, report):
            self.kube.emit_event(
                run.target,
                reason="HungWorkerLeftRunning",
                message=f"pod {verdict.pod} is {verdict.kind} ({verdict.evidence}); not "
                "restarted: hungWorkers.action is Observe, or the restart budget is spent",
                warning=True,
                now=now,
            )
        _export_health(namespace, name, report)
        run.health = report

    def _restart(self, run: _Pass, restart: health.Restart, now: datetime) -> None:
        namespace, name = run.key
        verdict = restart.verdict
        try:
            self.kube.delete_pod(namespace, restart.pod, restart.uid)
        except KubeError as error:
            log.warning("could not restart hung worker %s: %s", restart.pod, error.message)
            return
        log.warning("restarted hung worker %s/%s: %s", namespace, restart.pod, verdict)
        metrics.WORKER_RESTARTS.labels(namespace, name, restart.pool, verdict.kind).inc()
        self.kube.emit_event(
            run.target,
            reason="RestartedHungWorker",
            message=f"deleted pod {restart.pod} ({restart.pool}): {verdict.kind}, "
            f"{verdict.evidence}",
            warning=True,
            now=now,
        )

    def _write_status(self, run: _Pass) -> str:
        """7. Status in one place: written only when it differs; an Event per transition."""
        namespace, name = run.key
        self._read_beat_failure(run)
        seen = self._observation(run)
        previous = run.resource.get("status") or {}
        update = status.compute(seen, previous, self.clock())
        _export_cluster(namespace, name, seen)
        if _differs(update.status, previous):
            patch = {**{k: None for k in previous if k not in update.status}, **update.status}
            self.kube.patch_cluster_status(namespace, name, patch)
        for change in update.transitions:
            self.kube.emit_event(
                run.target,
                reason=change.reason,
                message=f"{change.type}={change.status}: {change.message}",
                warning=change.warning,
                now=self.clock(),
            )
        phase: str = update.status["phase"]
        return phase

    # --- helpers of the steps ----------------------------------------------------------------

    def _read_beat_failure(self, run: _Pass) -> None:
        """Why beat has no pod, from its StatefulSet's Events: the StatefulSet's status has no
        condition for it. Read only while beat is on and has no pod, so never in steady state."""
        if run.spec is None or not run.spec.beat.enabled:
            return
        beat = naming.beat_name(run.key[1])
        if not status.beat_lacks_pod(run.live.get(("StatefulSet", beat))):
            return
        try:
            events = self.kube.list_events(
                run.key[0], "StatefulSet", beat, status.Reason.FAILED_CREATE
            )
        except KubeError as error:  # Events are a hint: the status is written without it
            log.info("could not read the Events of %s/%s: %s", run.key[0], beat, error)
            return
        run.beat_failure = status.beat_create_failure(events, self.clock())

    def _broker_extras(
        self, namespace: str, spec: ClusterSpec
    ) -> tuple[str | None, rabbitmq.ManagementApi | None, str] | status.Problem:
        """The CA bundle (PEM), the management API with its login, and the CA Secret's uid
        (for the pods' digest), or the problem with the Secret that holds one of them."""
        ref = spec.broker
        ca_data, ca_uid, management = None, "", None
        if ref.ca is not None:
            found = self._secret_value(
                namespace,
                "spec.broker.caSecretRef",
                ref.ca.name,
                ref.ca.key,
                status.Reason.BROKER_SECRET_MISSING,
            )
            if isinstance(found, status.Problem):
                return found
            ca_uid, ca_data = found
            if "-----BEGIN CERTIFICATE-----" not in ca_data:
                return status.Problem(
                    status.Reason.BROKER_SECRET_MISSING,
                    f"spec.broker.caSecretRef.key: Secret {ref.ca.name!r} key {ref.ca.key!r} "
                    "holds no PEM certificate",
                )
        if ref.management is not None:
            api = ref.management
            field = "spec.broker.managementApi.credentialsSecretRef"
            login: list[str] = []
            for key, key_field in (
                (api.username_key, "usernameKey"),
                (api.password_key, "passwordKey"),
            ):
                found = self._secret_value(
                    namespace,
                    field,
                    api.secret_name,
                    key,
                    status.Reason.BROKER_SECRET_MISSING,
                    key_field=key_field,
                )
                if isinstance(found, status.Problem):
                    return found
                login.append(found[1])
            management = rabbitmq.ManagementApi(api.url, login[0], login[1], ca_data=ca_data)
        return ca_data, management, ca_uid

    def _secret_value(
        self, namespace: str, field: str, name: str, key: str, reason: str, key_field: str = "key"
    ) -> tuple[str, str] | status.Problem:
        """(the Secret's uid, the key's decoded value), or the problem that names ``field``."""
        secret = self.kube.get_secret(namespace, name)
        if secret is None:
            return status.Problem(
                reason, f"{field}.name: Secret {name!r} not found in namespace {namespace!r}"
            )
        data: Mapping[str, str] = secret.get("data") or {}
        if key not in data:
            return status.Problem(
                reason,
                f"{field}.{key_field}: Secret {name!r} has no key {key!r} "
                f"(it has: {', '.join(sorted(data)) or 'none'})",
            )
        try:
            value = base64.b64decode(data[key]).decode().strip()
        except (binascii.Error, UnicodeDecodeError):
            return status.Problem(
                reason,
                f"{field}.{key_field}: Secret {name!r} key {key!r} is not valid "
                "base64-encoded text",
            )
        return str(secret.get("metadata", {}).get("uid", "")), value

    def _name_conflicts(
        self,
        namespace: str,
        desired: Sequence[Mapping[str, Any]],
        live: Mapping[tuple[str, str], Mapping[str, Any]],
        owner_uid: str,
    ) -> list[status.Problem]:
        """Objects with our children's names that something else owns: never take them over."""
        problems = []
        for want in desired:
            kind, name = want["kind"], want["metadata"]["name"]
            found = live.get((kind, name)) or self.kube.get_child(kind, namespace, name)
            if found is not None and not diff.is_controlled_by(found, owner_uid):
                problems.append(
                    status.Problem(
                        status.Reason.NAME_CONFLICT,
                        f"{kind} {name!r} already exists and is not managed by this "
                        "CeleryCluster; rename the cluster or pool, or delete that object",
                    )
                )
        return problems

    def _execute(
        self,
        actions: Sequence[diff.Action],
        namespace: str,
        live: dict[tuple[str, str], dict[str, Any]],
        target: EventTarget,
    ) -> list[status.Problem]:
        problems = []
        for action in actions:
            key = (action.kind, action.name)
            try:
                if action.verb == "delete":
                    uid = live[key]["metadata"].get("uid")
                    self.kube.delete_child(action.kind, namespace, action.name, uid)
                    del live[key]
                else:
                    assert action.body is not None
                    live[key] = self.kube.apply(action.body)
            except KubeError as error:
                if action.kind == "StatefulSet" and error.invalid and key in live:
                    # A field a StatefulSet cannot change (its volume claims): replace it. The
                    # foreground delete keeps the at-most-one beat: the new one starts after.
                    self.kube.delete_child(
                        action.kind, namespace, action.name, live[key]["metadata"].get("uid")
                    )
                    self._event(target, "Replacing", f"{action.kind} {action.name}: {error}")
                    continue
                problems.append(
                    status.Problem(
                        status.Reason.APPLY_FAILED,
                        f"could not {action.verb} {action.kind} {action.name!r}: {error.message}",
                    )
                )
                continue
            log.info("%sd %s %s (%s)", action.verb, action.kind, action.name, action.reason)
            self._event(
                target,
                {"create": "Created", "update": "Updated", "delete": "Deleted"}[action.verb],
                f"{action.verb}d {action.kind} {action.name}: {action.reason}",
            )
        return problems

    def _unstick_beat(
        self,
        namespace: str,
        name: str,
        live: Mapping[tuple[str, str], Mapping[str, Any]],
        target: EventTarget,
    ) -> None:
        beat = live.get(("StatefulSet", naming.beat_name(name)))
        if beat is None:
            return
        status_ = beat.get("status") or {}
        if status_.get("updateRevision") == status_.get("currentRevision"):
            return  # no rollout under way: do not even list the pods
        pods = self.kube.list_pods(namespace, naming.beat_selector(name))
        stuck = diff.stuck_beat_pod(beat, pods)
        if stuck is not None:
            uid = next(p["metadata"].get("uid") for p in pods if p["metadata"]["name"] == stuck)
            self.kube.delete_pod(namespace, stuck, uid)
            self._event(
                target,
                "ReplacedStuckBeat",
                f"deleted pod {stuck}: not ready on an old revision, blocking the rollout",
            )

    def _event(self, target: EventTarget, reason: str, message: str) -> None:
        self.kube.emit_event(
            target, reason=reason, message=message, warning=False, now=self.clock()
        )

    def _observation(self, run: _Pass) -> status.Observation:
        spec, live, name = run.spec, run.live, run.key[1]
        if spec is None:
            # The spec cannot be read: report what runs, by the labels on the live children.
            pools = tuple(
                status.observe_pool(
                    obj["metadata"]["labels"].get(naming.POOL_LABEL, child),
                    (),
                    obj.get("spec", {}).get("replicas", 0),
                    obj,
                    None,
                )
                for (kind, child), obj in sorted(live.items())
                if kind == "Deployment"
                and obj["metadata"]["labels"].get(naming.COMPONENT_LABEL) == naming.WORKER
            )
            beat_live = next((o for (k, _), o in live.items() if k == "StatefulSet"), None)
            beat_enabled = beat_live is not None
        else:
            pools = tuple(
                status.observe_pool(
                    pool.name,
                    pool.queues,
                    run.replicas.get(pool.name, pool.replicas),
                    live.get(("Deployment", naming.worker_name(name, pool.name))),
                    run.queue_backlog,
                    required=pool.autoscaling.min_replicas if pool.name in run.replicas else None,
                )
                for pool in spec.workers
            )
            beat_enabled = spec.beat.enabled
            beat_live = live.get(("StatefulSet", naming.beat_name(name)))
        beat_ready, beat_rolled_out = status.observe_beat(beat_live)
        flower = None
        if spec is not None and spec.flower.enabled:
            deployment = live.get(("Deployment", naming.flower_name(name))) or {}
            ready = (deployment.get("status") or {}).get("readyReplicas", 0) >= 1
            flower = "Ready" if ready else "NotReady"
        scaling = self.autoscaler.report(run.key) if self.autoscaler else ()
        return status.Observation(
            generation=run.resource["metadata"].get("generation", 0),
            pools=pools,
            beat_enabled=beat_enabled,
            beat_ready=beat_ready,
            beat_rolled_out=beat_rolled_out,
            beat_create_failure=run.beat_failure,
            problems=tuple(run.problems),
            queue_backlog=run.queue_backlog,
            queue_unacked=run.queue_unacked,
            broker_error=run.broker_error,
            broker_kind=run.broker.kind if run.broker is not None else None,
            broker_counting=run.broker.counting if run.broker is not None else None,
            flower=flower,
            health=run.health,
            scaling=scaling,
        )


def _broker_mismatch(address: brokerurl.BrokerAddress, spec: ClusterSpec) -> status.Problem | None:
    """A spec field that the broker URL's kind cannot use, or that it needs and lacks."""
    ref = spec.broker
    where = f"the broker URL in Secret {ref.secret_name!r} is {address.scheme}://"
    if address.scheme == "sentinel" and not ref.master_name:
        return status.Problem(
            status.Reason.INVALID_SPEC,
            f"spec.broker.transportOptions.masterName: is required: {where} (Redis Sentinel)",
        )
    if ref.management is not None and address.scheme not in brokerurl.AMQP_SCHEMES:
        return status.Problem(
            status.Reason.INVALID_SPEC,
            f"spec.broker.managementApi: is for RabbitMQ (amqp://, amqps://) only: {where}",
        )
    return None


def _has_pods(run: _Pass) -> bool:
    """Whether a watched pool's Deployment reports pods (``status.replicas`` counts the ones
    not terminating, the only ones the monitor judges)."""
    assert run.spec is not None
    return any(
        (run.live.get(("Deployment", naming.worker_name(run.key[1], pool.name))) or {})
        .get("status", {})
        .get("replicas", 0)
        for pool in run.spec.workers
        if pool.hung.action != "Off"
    )


def _digest(secret_uid: str, value: str) -> str:
    """A digest of a Secret value for a pod template: keyed by the Secret's uid, so that
    someone who can read Deployments but not Secrets cannot test guesses of the value."""
    return hmac.new(secret_uid.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def _worker_pod(pod: Mapping[str, Any], now: datetime) -> WorkerPod:
    meta, state = pod["metadata"], pod.get("status") or {}
    created = meta.get("creationTimestamp")
    born = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if created else now
    return WorkerPod(
        name=meta["name"],
        uid=meta.get("uid", ""),
        pool=(meta.get("labels") or {}).get(naming.POOL_LABEL, ""),
        running=state.get("phase") == "Running",
        ready=any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in state.get("conditions") or []
        ),
        terminating=bool(meta.get("deletionTimestamp")),
        age=now - born,
    )


def _export_cluster(namespace: str, name: str, seen: status.Observation) -> None:
    """The reconcile's own readings as gauges (by queue and pool, never by pod)."""
    for queue, count in (seen.queue_backlog or {}).items():
        metrics.QUEUE_MESSAGES.labels(namespace, name, queue).set(count)
    for queue, count in (seen.queue_unacked or {}).items():
        metrics.QUEUE_UNACKED.labels(namespace, name, queue).set(count)
    if seen.broker_kind is not None:
        metrics.BROKER_INFO.labels(namespace, name, seen.broker_kind).set(1)
    for pool in seen.pools:
        for kind, value in (
            ("desired", pool.desired),
            ("current", pool.replicas),
            ("ready", pool.ready),
        ):
            metrics.POOL_REPLICAS.labels(namespace, name, pool.name, kind).set(value)
    if seen.beat_enabled:
        metrics.BEAT_UP.labels(namespace, name).set(1 if seen.beat_ready else 0)
    if seen.queue_backlog is not None or seen.broker_error is not None:
        reachable = 1 if seen.broker_error is None else 0
        metrics.BROKER_REACHABLE.labels(namespace, name).set(reachable)


def _export_health(namespace: str, name: str, report: HealthReport) -> None:
    for reason in (health.BROKER_UNREACHABLE, health.MASS_UNRESPONSIVE):
        metrics.MONITOR_GUARD.labels(namespace, name, reason).set(report.guard == reason)
    for pool in report.pools:
        metrics.WORKERS_ANSWERING.labels(namespace, name, pool.name).set(pool.answering)
        metrics.WORKERS_CHECKED.labels(namespace, name, pool.name).set(pool.checked)
        for kind in health.HUNG:
            count = sum(1 for v in pool.hung if v.kind == kind)
            metrics.HUNG_WORKERS.labels(namespace, name, pool.name, kind).set(count)


def _differs(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return any(old.get(key) != value for key, value in new.items()) or any(
        key not in new for key in old
    )
