"""One reconcile of one CeleryCluster: observe, decide (pure modules), write what differs.

The same function runs on create, update, resume, child changes and a timer (level-triggered):
it never asks what happened, only what is and what should be. It writes nothing when the live
children and status already match, and it never deletes a running child because the spec is
wrong: a spec that cannot work leaves everything running and marks the cluster Degraded.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery_operator import GROUP, KIND, VERSION, builders, diff, health, metrics, naming, status
from celery_operator.autoscaler import Autoscaler, Target
from celery_operator.eventstream import EventStreams
from celery_operator.kube import EventTarget, Kube, KubeError
from celery_operator.monitor import (
    BROKER_UNREACHABLE,
    MASS_UNRESPONSIVE,
    HealthMonitor,
    HealthReport,
    WorkerPod,
)
from celery_operator.queues import KeyScheme, OldestMessages
from celery_operator.spec import ClusterSpec, SpecError, parse_cluster

log = logging.getLogger(__name__)

BacklogReader = Callable[[str, Sequence[str], KeyScheme], Mapping[str, int]]
"""Reads messages waiting per queue from the broker at a URL; raises when it cannot."""
HeadReader = Callable[[str, Sequence[str], KeyScheme], Mapping[str, Sequence[str | None]]]
"""Reads the delivery tag of the oldest message of each queue's lists; raises when it cannot."""
BeatTickReader = Callable[[str, KeyScheme], float | None]
"""Reads when beat last announced a tick (Unix time); raises when the broker cannot be read."""

Clock = Callable[[], datetime]


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
    """Seconds until the autoscaler's next poll of this cluster; None when nothing autoscales."""


class Reconciler:
    """Reconciles CeleryClusters through a Kube adapter and a broker reader."""

    def __init__(
        self,
        kube: Kube,
        read_backlog: BacklogReader | None,
        clock: Clock = utcnow,
        monitor: HealthMonitor | None = None,
        autoscaler: Autoscaler | None = None,
        events: EventStreams | None = None,
        read_heads: HeadReader | None = None,
        read_beat_tick: BeatTickReader | None = None,
    ) -> None:
        self.kube = kube
        self.read_backlog = read_backlog
        self.clock = clock
        self.monitor = monitor
        self.autoscaler = autoscaler
        self.events = events
        self.read_heads = read_heads
        self.read_beat_tick = read_beat_tick
        self._oldest: dict[tuple[str, str], OldestMessages] = {}

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

    def reconcile(self, namespace: str, name: str) -> Outcome:
        writes_before = self.kube.writes
        cluster = self.kube.get_cluster(namespace, name)
        if cluster is None or cluster["metadata"].get("deletionTimestamp"):
            if self.monitor is not None:
                self.monitor.forget((namespace, name))
            if self.autoscaler is not None:
                self.autoscaler.forget((namespace, name))
            if self.events is not None:
                self.events.forget((namespace, name))
            metrics.forget_cluster(namespace, name)
            self._oldest.pop((namespace, name), None)
            return Outcome(found=False)  # the garbage collector removes the children
        meta = cluster["metadata"]
        owner = builders.Owner(
            api_version=f"{GROUP}/{VERSION}",
            kind=KIND,
            name=name,
            namespace=namespace,
            uid=meta["uid"],
        )
        target = EventTarget(owner.api_version, KIND, name, namespace, owner.uid)
        live = self._live_children(namespace, name)

        problems: list[status.Problem] = []
        spec: ClusterSpec | None = None
        try:
            spec = parse_cluster(name, cluster.get("spec") or {})
        except SpecError as error:
            problems.append(status.Problem(status.Reason.INVALID_SPEC, str(error)))

        broker_url: str | None = None
        actions: list[diff.Action] = []
        replicas: dict[str, int] = {}
        if spec is not None:
            broker_url, problem = self._broker_url(namespace, spec)
            problems += [problem] if problem else []
            problems += self._flower_secret(namespace, spec)
            if self.autoscaler is not None:
                pools = {
                    pool.name: live.get(("Deployment", naming.worker_name(name, pool.name))) or {}
                    for pool in spec.workers
                }
                replicas = self.autoscaler.replicas((namespace, name), spec, pools)
            desired = builders.desired_children(owner, spec, replicas)
            problems += self._name_conflicts(namespace, desired, live, owner.uid)
            if not problems:
                actions = diff.plan(desired, live.values(), owner.uid)
                problems += self._execute(actions, namespace, live, target)
                self._unstick_beat(namespace, name, live, target)

        if self.autoscaler is not None:
            # Poll only what a reconcile could apply; else hold (a spec being fixed, a Secret
            # being restored) until one can.
            tracked = None
            if spec is not None and broker_url is not None and not problems:
                tracked = Target(spec, broker_url, target)
            self.autoscaler.track((namespace, name), tracked)
        if self.events is not None and spec is not None and broker_url is not None:
            self.events.watch((namespace, name), broker_url, spec)
            self.events.export((namespace, name), tuple(p.name for p in spec.workers))
        queue_backlog, broker_error = self._backlog(spec, broker_url)
        if queue_backlog is not None and spec is not None and broker_url is not None:
            self._export_broker_readings(namespace, name, spec, broker_url)
        previous = cluster.get("status") or {}
        report = None
        if spec is not None and broker_url is not None and not problems:
            report = self._health(
                namespace, name, spec, broker_url, queue_backlog, previous, target
            )
        seen = self._observation(
            name,
            meta.get("generation", 0),
            spec,
            live,
            problems,
            queue_backlog,
            broker_error,
            replicas,
        )
        scaling = self.autoscaler.report((namespace, name)) if self.autoscaler else ()
        seen = dataclasses.replace(seen, health=report, scaling=scaling)
        update = status.compute(seen, previous, self.clock())
        _export_cluster(namespace, name, seen)
        if _differs(update.status, previous):
            patch = {**{k: None for k in previous if k not in update.status}, **update.status}
            self.kube.patch_cluster_status(namespace, name, patch)
        for change in update.transitions:
            self.kube.emit_event(
                target,
                reason=change.reason,
                message=f"{change.type}={change.status}: {change.message}",
                warning=change.warning,
                now=self.clock(),
            )
        return Outcome(
            found=True,
            writes=self.kube.writes - writes_before,
            actions=tuple(actions),
            phase=update.status["phase"],
            poll_in=self.autoscaler.next_poll((namespace, name)) if self.autoscaler else None,
        )

    def _export_broker_readings(
        self, namespace: str, name: str, spec: ClusterSpec, broker_url: str
    ) -> None:
        """The age of each queue's oldest message (see queues.OldestMessages) and beat's last
        tick, as gauges; what cannot be read now is read at the next reconcile."""
        if self.read_heads is None:
            return
        queues = sorted({q for pool in spec.workers for q in pool.queues})
        try:
            heads = self.read_heads(broker_url, queues, spec.broker.keys)
        except Exception as error:  # the broker went away since the backlog read: next time
            log.info("could not read the oldest messages of %s/%s: %s", namespace, name, error)
            return
        oldest = self._oldest.setdefault((namespace, name), OldestMessages())
        for queue, age in oldest.observe(heads, time.monotonic()).items():
            metrics.QUEUE_OLDEST_AGE.labels(namespace, name, queue).set(age)
        if self.read_beat_tick is not None and spec.beat.enabled:
            try:
                tick = self.read_beat_tick(broker_url, spec.broker.keys)
            except Exception as error:  # as above: next time
                log.info("could not read beat's last tick of %s/%s: %s", namespace, name, error)
                return
            if tick is not None:
                metrics.BEAT_LAST_TICK.labels(namespace, name).set(tick)

    def _health(
        self,
        namespace: str,
        name: str,
        spec: ClusterSpec,
        broker_url: str,
        queue_backlog: Mapping[str, int] | None,
        previous: Mapping[str, Any],
        target: EventTarget,
    ) -> HealthReport | None:
        """A hung-worker cycle when one is due (else the last one), and its restarts."""
        if self.monitor is None:
            return None
        key, now = (namespace, name), self.clock()
        if not self.monitor.due(key, now):
            return self.monitor.last(key)
        selector = {naming.INSTANCE_LABEL: name, naming.COMPONENT_LABEL: naming.WORKER}
        pods = [_worker_pod(p, now) for p in self.kube.list_pods(namespace, selector)]
        backlog = None
        if queue_backlog is not None:
            backlog = {
                pool.name: sum(queue_backlog.get(q, 0) for q in pool.queues)
                for pool in spec.workers
            }
        report = self.monitor.cycle(
            key, spec, broker_url, pods, backlog, status.restart_times(previous), now
        )
        for restart in report.restarts:
            verdict = restart.verdict
            try:
                self.kube.delete_pod(namespace, restart.pod, restart.uid)
            except KubeError as error:
                log.warning("could not restart hung worker %s: %s", restart.pod, error.message)
                continue
            log.warning("restarted hung worker %s/%s: %s", namespace, restart.pod, verdict)
            metrics.WORKER_RESTARTS.labels(namespace, name, restart.pool, verdict.kind).inc()
            self.kube.emit_event(
                target,
                reason="RestartedHungWorker",
                message=f"deleted pod {restart.pod} ({restart.pool}): {verdict.kind}, "
                f"{verdict.evidence}",
                warning=True,
                now=now,
            )
        for verdict in self.monitor.newly_held(key, report):
            self.kube.emit_event(
                target,
                reason="HungWorkerLeftRunning",
                message=f"pod {verdict.pod} is {verdict.kind} ({verdict.evidence}); not "
                "restarted: hungWorkers.action is Observe, or the restart budget is spent",
                warning=True,
                now=now,
            )
        _export(namespace, name, report)
        return report

    def _live_children(self, namespace: str, name: str) -> dict[tuple[str, str], dict[str, Any]]:
        labels = naming.cluster_labels(name)
        live: dict[tuple[str, str], dict[str, Any]] = {}
        for kind in ("Deployment", "StatefulSet", "Service"):
            for obj in self.kube.list_children(kind, namespace, labels):
                live[(kind, obj["metadata"]["name"])] = obj
        return live

    def _broker_url(
        self, namespace: str, spec: ClusterSpec
    ) -> tuple[str | None, status.Problem | None]:
        ref = spec.broker
        raw, problem = self._secret_value(
            namespace,
            "spec.broker.urlSecretRef",
            ref.secret_name,
            ref.secret_key,
            status.Reason.BROKER_SECRET_MISSING,
        )
        if raw is None:
            return None, problem
        try:
            return base64.b64decode(raw).decode().strip(), None
        except (binascii.Error, UnicodeDecodeError):
            return None, status.Problem(
                status.Reason.BROKER_SECRET_MISSING,
                f"spec.broker.urlSecretRef.key: Secret {ref.secret_name!r} key "
                f"{ref.secret_key!r} is not valid base64-encoded text",
            )

    def _flower_secret(self, namespace: str, spec: ClusterSpec) -> list[status.Problem]:
        """Flower's login must exist before Flower starts: it is never served without one."""
        flower = spec.flower
        if not flower.enabled:
            return []
        _, problem = self._secret_value(
            namespace,
            "spec.flower.basicAuthSecretRef",
            flower.secret_name,
            flower.secret_key,
            status.Reason.FLOWER_SECRET_MISSING,
        )
        return [problem] if problem else []

    def _secret_value(
        self, namespace: str, field: str, name: str, key: str, reason: str
    ) -> tuple[str | None, status.Problem | None]:
        """A Secret key's value (still base64), or the problem that names ``field`` to fix."""
        data = self.kube.get_secret_data(namespace, name)
        if data is None:
            return None, status.Problem(
                reason, f"{field}.name: Secret {name!r} not found in namespace {namespace!r}"
            )
        if key not in data:
            return None, status.Problem(
                reason,
                f"{field}.key: Secret {name!r} has no key {key!r} "
                f"(it has: {', '.join(sorted(data)) or 'none'})",
            )
        return data[key], None

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

    def _backlog(
        self, spec: ClusterSpec | None, url: str | None
    ) -> tuple[Mapping[str, int] | None, str | None]:
        if spec is None or url is None or self.read_backlog is None:
            return None, None
        queues = sorted({q for pool in spec.workers for q in pool.queues})
        try:
            return self.read_backlog(url, queues, spec.broker.keys), None
        except Exception as error:  # any broker failure: report it, never stop reconciling
            return None, f"{type(error).__name__}: {error}"

    def _observation(
        self,
        name: str,
        generation: int,
        spec: ClusterSpec | None,
        live: Mapping[tuple[str, str], Mapping[str, Any]],
        problems: Sequence[status.Problem],
        queue_backlog: Mapping[str, int] | None,
        broker_error: str | None,
        replicas: Mapping[str, int],
    ) -> status.Observation:
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
                    replicas.get(pool.name, pool.replicas),
                    live.get(("Deployment", naming.worker_name(name, pool.name))),
                    queue_backlog,
                    required=pool.autoscaling.min_replicas if pool.name in replicas else None,
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
        return status.Observation(
            generation=generation,
            pools=pools,
            beat_enabled=beat_enabled,
            beat_ready=beat_ready,
            beat_rolled_out=beat_rolled_out,
            problems=tuple(problems),
            queue_backlog=queue_backlog,
            broker_error=broker_error,
            flower=flower,
        )


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


def _export(namespace: str, name: str, report: HealthReport) -> None:
    for reason in (BROKER_UNREACHABLE, MASS_UNRESPONSIVE):
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
