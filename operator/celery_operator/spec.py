"""The CeleryCluster spec as typed, frozen objects, parsed from the raw resource (pure, no I/O).

The CRD in ``crds/`` is the source of truth for the API: the API server validates and defaults a
resource before the operator sees it. Parsing still applies the same defaults (a unit test holds
them equal to the CRD's) so that the operator behaves the same whether or not the server defaulted
a field, and it checks what the schema cannot: rules that span the resource's name and its fields.
Every error names the field path, e.g. ``spec.workers[1].timeLimitSeconds``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from celery_operator.queues import DEFAULT_PRIORITY_STEPS, DEFAULT_SEPARATOR, KeyScheme

_T = TypeVar("_T")

Json = Any
"""A value decoded from the resource's JSON: kept as it came for Kubernetes core types."""

DEFAULT_IMAGE_PULL_POLICY: Final = "IfNotPresent"
DEFAULT_SECRET_KEY: Final = "url"
DEFAULT_CA_KEY: Final = "ca.crt"
DEFAULT_USERNAME_KEY: Final = "username"
DEFAULT_PASSWORD_KEY: Final = "password"
DEFAULT_QUEUES: Final = ("celery",)
DEFAULT_REPLICAS: Final = 1
DEFAULT_CONCURRENCY: Final = 2
DEFAULT_POOL: Final = "prefork"
DEFAULT_WORKER_GRACE_SECONDS: Final = 60
"""Long enough for typical tasks to finish during Celery's warm shutdown (SIGTERM)."""
DEFAULT_BEAT_GRACE_SECONDS: Final = 30
DEFAULT_BEAT_PERSISTENCE: Final = "emptyDir"
DEFAULT_BEAT_PERSISTENCE_SIZE: Final = "64Mi"

DEFAULT_STARTUP_TIMEOUT_SECONDS: Final = 120
"""How long a worker or beat may take to start (imports, broker) before liveness counts."""
DEFAULT_BROKER_GRACE_SECONDS: Final = 30
"""How long a worker may be without its broker and still count as alive (the probes' default)."""
DEFAULT_PROBE_TIMEOUT_SECONDS: Final = 5
"""A check takes about 30 ms; five seconds leave room for a node under load."""

HUNG_ACTIONS: Final = ("Restart", "Observe", "Off")
DEFAULT_HUNG_ACTION: Final = "Restart"
DEFAULT_UNRESPONSIVE_CYCLES: Final = 3
DEFAULT_STUCK_SECONDS: Final = 1800
"""Without a hard time limit, a worker whose every slot ran the same tasks for 30 minutes while
work waits and nothing finishes counts as stuck. With ``timeLimitSeconds``, that limit plus
``STUCK_MARGIN_SECONDS``: Celery itself should have killed the task by then."""
STUCK_MARGIN_SECONDS: Final = 60
DEFAULT_MAX_RESTARTS: Final = 3
DEFAULT_RESTART_WINDOW_SECONDS: Final = 600
DEFAULT_MAX_UNAVAILABLE_PERCENT: Final = 25

MAX_REPLICAS: Final = 1000
"""The most worker pods a pool may ask for: ``replicas``, and autoscaling's ``minReplicas``,
``maxReplicas`` and ``fallbackReplicas`` (the CRD's ``maximum``). A typo such as 10000 would
otherwise start that many pods at once; every worker also joins the broker's pidbox fanout and
is pinged by the hung-worker monitor, so broadcast and monitoring cost grow with the count.
1000 leaves room for large pools, and is the bound autoscaling already had."""
DEFAULT_MIN_REPLICAS: Final = 1
DEFAULT_TARGET_TASKS_PER_SLOT: Final = 1.0
"""One task per pool slot: enough workers to start everything waiting at once (up to max)."""
DEFAULT_ACTIVATION_BACKLOG: Final = 0
DEFAULT_POLL_INTERVAL_SECONDS: Final = 1
"""One pipelined read of the queue lengths per second: a burst raises replicas within about
two seconds, where a 30 s poll plus the HPA's 15 s sync takes up to 45."""
DEFAULT_TOLERANCE_PERCENT: Final = 10
"""The HPA's tolerance: no change while load is within 10 % of the target."""
DEFAULT_FALLBACK_AFTER_SECONDS: Final = 30
DEFAULT_FLOWER_SECRET_KEY: Final = "auth"
DEFAULT_FLOWER_PORT: Final = 5555

POOL_TYPES: Final = ("prefork", "threads", "solo", "gevent", "eventlet")
PULL_POLICIES: Final = ("Always", "IfNotPresent", "Never")
PERSISTENCE_TYPES: Final = ("emptyDir", "persistentVolumeClaim")

MAX_OBJECT_NAME: Final = 63
"""Children's names become label values and pod hostnames: both stop at 63 characters."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_APP = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*(:[A-Za-z_][A-Za-z0-9_.]*)?$")
_MANAGEMENT_URL = re.compile(r"^https?://[^/@?#\s]+(/[^@?#\s]*)?$")
"""scheme, host, port and an optional path prefix; no login (that comes from the Secret)."""


class SpecError(ValueError):
    """A spec that cannot work; ``path`` is the field to fix, ``str()`` reads as one sentence."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class PodOverrides:
    """Pod-level settings a user may add to every pod of a pool or of beat."""

    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    security_context: Mapping[str, Json] | None = None
    container_security_context: Mapping[str, Json] | None = None
    service_account_name: str | None = None
    automount_service_account_token: bool | None = None
    """None: no token in the pods (the default: Celery never calls the Kubernetes API)."""
    priority_class_name: str | None = None
    host_network: bool | None = None
    volumes: tuple[Mapping[str, Json], ...] = ()
    volume_mounts: tuple[Mapping[str, Json], ...] = ()

    def layered_over(self, base: PodOverrides) -> PodOverrides:
        """These overrides on top of ``base`` (the cluster-wide ones): ours win field by field."""
        return PodOverrides(
            labels={**base.labels, **self.labels},
            annotations={**base.annotations, **self.annotations},
            security_context=_first(self.security_context, base.security_context),
            container_security_context=_first(
                self.container_security_context, base.container_security_context
            ),
            service_account_name=_first(self.service_account_name, base.service_account_name),
            automount_service_account_token=_first(
                self.automount_service_account_token, base.automount_service_account_token
            ),
            priority_class_name=_first(self.priority_class_name, base.priority_class_name),
            host_network=_first(self.host_network, base.host_network),
            volumes=_merge_named(base.volumes, self.volumes),
            volume_mounts=_merge_named(base.volume_mounts, self.volume_mounts),
        )


@dataclass(frozen=True)
class Placement:
    """Settings shared by worker pools and beat: what the container gets and where it runs."""

    resources: Mapping[str, Json] = field(default_factory=dict)
    env: tuple[Mapping[str, Json], ...] = ()
    env_from: tuple[Mapping[str, Json], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Json], ...] = ()
    affinity: Mapping[str, Json] | None = None
    extra_args: tuple[str, ...] = ()
    pod: PodOverrides = field(default_factory=PodOverrides)


@dataclass(frozen=True)
class HungWorkers:
    """What the operator does about a pool's hung workers (``spec.workers[].hungWorkers``)."""

    action: str = DEFAULT_HUNG_ACTION
    unresponsive_cycles: int = DEFAULT_UNRESPONSIVE_CYCLES
    stuck_after_seconds: int = DEFAULT_STUCK_SECONDS
    max_restarts: int = DEFAULT_MAX_RESTARTS
    window_seconds: int = DEFAULT_RESTART_WINDOW_SECONDS
    max_unavailable_percent: int = DEFAULT_MAX_UNAVAILABLE_PERCENT


@dataclass(frozen=True)
class ScalingRules:
    """How fast one direction may go, as the HPA's ``behavior``: a change waits for the
    stabilization window, and per period may move by at most the larger of the two steps."""

    stabilization_window_seconds: int
    max_step_percent: int
    max_step_pods: int
    period_seconds: int = 15


DEFAULT_SCALE_UP: Final = ScalingRules(
    stabilization_window_seconds=0, max_step_percent=100, max_step_pods=4
)
"""The HPA's: at once, by at most double or four pods (whichever is more) per 15 s."""
DEFAULT_SCALE_DOWN: Final = ScalingRules(
    stabilization_window_seconds=300, max_step_percent=100, max_step_pods=0
)
"""The HPA's: the highest recommendation of the last five minutes wins."""


@dataclass(frozen=True)
class Autoscaling:
    """A pool's replicas from its broker backlog and tasks in hand
    (``spec.workers[].autoscaling``; see :mod:`celery_operator.scaling`)."""

    enabled: bool = False
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = 1
    target_tasks_per_slot: float = DEFAULT_TARGET_TASKS_PER_SLOT
    activation_backlog: int = DEFAULT_ACTIVATION_BACKLOG
    poll_interval_seconds: int = DEFAULT_POLL_INTERVAL_SECONDS
    tolerance_percent: int = DEFAULT_TOLERANCE_PERCENT
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    fallback_replicas: int | None = None
    """With the broker unreadable for ``fallback_after_seconds``, raise the pool to this many
    replicas (never lower it). None: hold the current replicas."""
    fallback_after_seconds: int = DEFAULT_FALLBACK_AFTER_SECONDS


@dataclass(frozen=True)
class WorkerPool:
    """One ``celery worker`` Deployment: its queues, concurrency and limits."""

    name: str
    queues: tuple[str, ...] = DEFAULT_QUEUES
    replicas: int = DEFAULT_REPLICAS
    concurrency: int = DEFAULT_CONCURRENCY
    pool: str = DEFAULT_POOL
    prefetch_multiplier: int | None = None
    max_tasks_per_child: int | None = None
    max_memory_per_child_kib: int | None = None
    soft_time_limit_seconds: int | None = None
    time_limit_seconds: int | None = None
    termination_grace_period_seconds: int = DEFAULT_WORKER_GRACE_SECONDS
    placement: Placement = field(default_factory=Placement)
    hung: HungWorkers = field(default_factory=HungWorkers)
    autoscaling: Autoscaling = field(default_factory=Autoscaling)


@dataclass(frozen=True)
class Beat:
    """The singleton ``celery beat``."""

    enabled: bool = True
    scheduler: str = ""
    persistence: str = DEFAULT_BEAT_PERSISTENCE
    storage_class_name: str | None = None
    persistence_size: str = DEFAULT_BEAT_PERSISTENCE_SIZE
    termination_grace_period_seconds: int = DEFAULT_BEAT_GRACE_SECONDS
    placement: Placement = field(default_factory=Placement)


@dataclass(frozen=True)
class Flower:
    """The optional Flower web UI (``spec.flower``), always behind a basic-auth login."""

    enabled: bool = False
    secret_name: str = ""
    """The Secret whose ``secret_key`` holds ``user:password`` (comma-separated for several)."""
    secret_key: str = DEFAULT_FLOWER_SECRET_KEY
    port: int = DEFAULT_FLOWER_PORT
    resources: Mapping[str, Json] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeTiming:
    """When the kubelet runs one check, and how many failures in a row fail the probe."""

    period_seconds: int
    failure_threshold: int
    enabled: bool = True
    timeout_seconds: int = DEFAULT_PROBE_TIMEOUT_SECONDS


DEFAULT_WORKER_LIVENESS: Final = ProbeTiming(period_seconds=10, failure_threshold=3)
"""A stopped or blocked worker is restarted within about 35 s (5 s of heartbeat, 3 x 10 s)."""
DEFAULT_WORKER_READINESS: Final = ProbeTiming(period_seconds=5, failure_threshold=2)
DEFAULT_BEAT_LIVENESS: Final = ProbeTiming(period_seconds=10, failure_threshold=3)


@dataclass(frozen=True)
class Probes:
    """The ``celery-probe`` checks the pods get (see ``probes/``); ``enabled: false`` opts out."""

    enabled: bool = True
    startup_timeout_seconds: int = DEFAULT_STARTUP_TIMEOUT_SECONDS
    broker_grace_seconds: int = DEFAULT_BROKER_GRACE_SECONDS
    worker_liveness: ProbeTiming = DEFAULT_WORKER_LIVENESS
    worker_readiness: ProbeTiming = DEFAULT_WORKER_READINESS
    beat_liveness: ProbeTiming = DEFAULT_BEAT_LIVENESS


@dataclass(frozen=True)
class SecretKeyRef:
    """One key of a Secret in the CeleryCluster's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class ManagementApiRef:
    """A RabbitMQ broker's management HTTP API: where it is, and the Secret with its login."""

    url: str
    secret_name: str
    username_key: str = DEFAULT_USERNAME_KEY
    password_key: str = DEFAULT_PASSWORD_KEY


@dataclass(frozen=True)
class Broker:
    """Where the broker URL lives (a Secret key), how the app's transport names queue keys, and
    what else the operator needs to reach the broker: a CA bundle for TLS, Sentinel's master
    name, RabbitMQ's management API."""

    secret_name: str
    secret_key: str = DEFAULT_SECRET_KEY
    keys: KeyScheme = field(default_factory=KeyScheme)
    master_name: str = ""
    """Sentinel's ``master_name`` transport option: which monitored master is the broker."""
    ca: SecretKeyRef | None = None
    """A CA bundle (PEM) that signed a TLS broker's certificate, for the operator and the pods."""
    management: ManagementApiRef | None = None


@dataclass(frozen=True)
class ClusterSpec:
    """A whole CeleryCluster spec, defaults applied and cross-field rules checked."""

    image: str
    app: str
    broker: Broker
    workers: tuple[WorkerPool, ...]
    image_pull_policy: str = DEFAULT_IMAGE_PULL_POLICY
    image_pull_secrets: tuple[str, ...] = ()
    env: tuple[Mapping[str, Json], ...] = ()
    env_from: tuple[Mapping[str, Json], ...] = ()
    pod: PodOverrides = field(default_factory=PodOverrides)
    beat: Beat = field(default_factory=Beat)
    probes: Probes = field(default_factory=Probes)
    flower: Flower = field(default_factory=Flower)

    def pool(self, name: str) -> WorkerPool:
        """The pool called ``name``; KeyError when there is none."""
        for pool in self.workers:
            if pool.name == name:
                return pool
        raise KeyError(name)


def parse_cluster(name: str, spec: Mapping[str, Json]) -> ClusterSpec:
    """Parse ``spec`` of the CeleryCluster called ``name``; raise SpecError naming the field."""
    r = _Reader(spec, "spec")
    image = r.string("image", required=True, min_length=1)
    app = r.string("app", required=True, pattern=_APP)
    pull_policy = r.choice("imagePullPolicy", PULL_POLICIES, DEFAULT_IMAGE_PULL_POLICY)
    pull_secrets = tuple(
        s.string("name", required=True, min_length=1) for s in r.objects("imagePullSecrets")
    )
    broker = _parse_broker(r.object("broker", required=True))
    pod = _parse_pod(r.object("podTemplate"))
    env = tuple(_named(e, "name") for e in r.objects("env"))
    env_from = tuple(e.raw for e in r.objects("envFrom"))

    pools = r.objects("workers", required=True)
    if not pools:
        raise SpecError("spec.workers", "at least one worker pool is required")
    workers = tuple(_parse_pool(p) for p in pools)
    seen: dict[str, int] = {}
    for index, pool in enumerate(workers):
        if pool.name in seen:
            raise SpecError(
                f"spec.workers[{index}].name",
                f"duplicate pool name {pool.name!r} (also spec.workers[{seen[pool.name]}])",
            )
        seen[pool.name] = index
        longest = f"{name}-worker-{pool.name}"
        if len(longest) > MAX_OBJECT_NAME:
            raise SpecError(
                f"spec.workers[{index}].name",
                f"Deployment name {longest!r} would be {len(longest)} characters; cluster name and "
                f"pool name together must fit in {MAX_OBJECT_NAME}",
            )
    beat = _parse_beat(r.object("beat"))
    if beat.enabled and len(f"{name}-beat") > MAX_OBJECT_NAME:
        raise SpecError("metadata.name", f"must be at most {MAX_OBJECT_NAME - 5} characters")
    flower = _parse_flower(r.object("flower"))
    if flower.enabled and len(f"{name}-flower") > MAX_OBJECT_NAME:
        raise SpecError("metadata.name", f"must be at most {MAX_OBJECT_NAME - 7} characters")
    return ClusterSpec(
        image=image,
        app=app,
        broker=broker,
        workers=workers,
        image_pull_policy=pull_policy,
        image_pull_secrets=pull_secrets,
        env=env,
        env_from=env_from,
        pod=pod,
        beat=beat,
        probes=_parse_probes(r.object("probes")),
        flower=flower,
    )


def _parse_flower(r: _Reader) -> Flower:
    enabled = r.boolean("enabled", default=False)
    ref = r.object("basicAuthSecretRef")
    name = ref.string("name", default="")
    if enabled and not name:
        raise SpecError(
            f"{ref.path}.name",
            "is required when Flower is enabled: the operator never serves Flower without a login",
        )
    return Flower(
        enabled=enabled,
        secret_name=name,
        secret_key=ref.string("key", default=DEFAULT_FLOWER_SECRET_KEY, min_length=1),
        port=r.integer_or("port", DEFAULT_FLOWER_PORT, low=1024, high=65535),
        resources=r.object("resources").raw,
    )


def _parse_broker(r: _Reader) -> Broker:
    ref = r.object("urlSecretRef", required=True)
    options = r.object("transportOptions")
    steps = options.integers("prioritySteps", default=DEFAULT_PRIORITY_STEPS, low=0, high=255)
    if not steps:
        raise SpecError(f"{options.path}.prioritySteps", "must list at least one step")
    if list(steps) != sorted(set(steps)):
        # kombu bisects over the steps as given, and its _size() counts a repeated step twice
        raise SpecError(
            f"{options.path}.prioritySteps",
            f"must be sorted ascending without duplicates (got {list(steps)})",
        )
    ca = r.object("caSecretRef")
    api = r.object("managementApi")
    management = None
    if api.raw:
        login = api.object("credentialsSecretRef", required=True)
        management = ManagementApiRef(
            url=_management_url(api),
            secret_name=login.string("name", required=True, min_length=1),
            username_key=login.string("usernameKey", default=DEFAULT_USERNAME_KEY, min_length=1),
            password_key=login.string("passwordKey", default=DEFAULT_PASSWORD_KEY, min_length=1),
        )
    return Broker(
        secret_name=ref.string("name", required=True, min_length=1),
        secret_key=ref.string("key", default=DEFAULT_SECRET_KEY, min_length=1),
        keys=KeyScheme(
            global_keyprefix=options.string("globalKeyprefix", default=""),
            priority_steps=steps,
            separator=options.string("separator", default=DEFAULT_SEPARATOR),
        ),
        master_name=options.string("masterName", default=""),
        ca=(
            SecretKeyRef(
                ca.string("name", required=True, min_length=1),
                ca.string("key", default=DEFAULT_CA_KEY, min_length=1),
            )
            if ca.raw
            else None
        ),
        management=management,
    )


def _management_url(api: _Reader) -> str:
    """The API's URL, checked without quoting it: a user may have put the login in it."""
    url = api.string("url", required=True)
    if not _MANAGEMENT_URL.match(url):
        raise SpecError(
            f"{api.path}.url",
            "must be http(s)://host[:port][/path prefix], without user, password, query or "
            "fragment (the login goes in credentialsSecretRef)",
        )
    return url


def _parse_pool(r: _Reader) -> WorkerPool:
    name = r.string("name", required=True, pattern=_DNS_LABEL, max_length=30)
    queues = r.strings("queues", default=DEFAULT_QUEUES)
    if not queues:
        raise SpecError(f"{r.path}.queues", "must name at least one queue")
    for index, queue in enumerate(queues):
        if not queue or "," in queue or queue.strip() != queue:
            raise SpecError(
                f"{r.path}.queues[{index}]",
                f"{queue!r} is not a queue name (empty, has a comma or surrounding spaces)",
            )
    soft = r.integer("softTimeLimitSeconds", low=1)
    hard = r.integer("timeLimitSeconds", low=1)
    if soft is not None and hard is not None and soft >= hard:
        raise SpecError(
            f"{r.path}.softTimeLimitSeconds",
            f"must be less than timeLimitSeconds ({soft} >= {hard})",
        )
    return WorkerPool(
        name=name,
        queues=queues,
        replicas=r.integer_or("replicas", DEFAULT_REPLICAS, low=0, high=MAX_REPLICAS),
        concurrency=r.integer_or("concurrency", DEFAULT_CONCURRENCY, low=1, high=1000),
        pool=r.choice("pool", POOL_TYPES, DEFAULT_POOL),
        prefetch_multiplier=r.integer("prefetchMultiplier", low=1),
        max_tasks_per_child=r.integer("maxTasksPerChild", low=1),
        max_memory_per_child_kib=r.integer("maxMemoryPerChild", low=1),
        soft_time_limit_seconds=soft,
        time_limit_seconds=hard,
        termination_grace_period_seconds=r.integer_or(
            "terminationGracePeriodSeconds", DEFAULT_WORKER_GRACE_SECONDS, low=1, high=86400
        ),
        placement=_parse_placement(r),
        hung=_parse_hung(r.object("hungWorkers"), hard),
        autoscaling=_parse_autoscaling(r.object("autoscaling")),
    )


def _parse_autoscaling(r: _Reader) -> Autoscaling:
    if not r.raw:
        return Autoscaling()
    enabled = r.boolean("enabled", default=True)
    low = r.integer_or("minReplicas", DEFAULT_MIN_REPLICAS, low=0, high=MAX_REPLICAS)
    high = r.integer("maxReplicas", low=1, high=MAX_REPLICAS)
    if high is None:
        if enabled:
            raise SpecError(f"{r.path}.maxReplicas", "is required when autoscaling is enabled")
        high = max(low, 1)
    if high < low:
        raise SpecError(f"{r.path}.maxReplicas", f"must be ≥ minReplicas ({high} < {low})")
    target = r.raw.get("targetTasksPerSlot", DEFAULT_TARGET_TASKS_PER_SLOT)
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1000:
        raise SpecError(
            f"{r.path}.targetTasksPerSlot",
            f"must be a number above 0, at most 1000 (got {target!r})",
        )
    unreadable = r.object("brokerUnreadable")
    fallback = unreadable.integer("fallbackReplicas", low=0, high=MAX_REPLICAS)
    if fallback is not None and fallback > high:
        raise SpecError(
            f"{unreadable.path}.fallbackReplicas",
            f"must be ≤ maxReplicas ({fallback} > {high})",
        )
    return Autoscaling(
        enabled=enabled,
        min_replicas=low,
        max_replicas=high,
        target_tasks_per_slot=float(target),
        activation_backlog=r.integer_or(
            "activationBacklog", DEFAULT_ACTIVATION_BACKLOG, low=0, high=10**9
        ),
        poll_interval_seconds=r.integer_or(
            "pollIntervalSeconds", DEFAULT_POLL_INTERVAL_SECONDS, low=1, high=300
        ),
        tolerance_percent=r.integer_or(
            "tolerancePercent", DEFAULT_TOLERANCE_PERCENT, low=0, high=99
        ),
        scale_up=_parse_rules(r.object("scaleUp"), DEFAULT_SCALE_UP),
        scale_down=_parse_rules(r.object("scaleDown"), DEFAULT_SCALE_DOWN),
        fallback_replicas=fallback,
        fallback_after_seconds=unreadable.integer_or(
            "afterSeconds", DEFAULT_FALLBACK_AFTER_SECONDS, low=0, high=86400
        ),
    )


def _parse_rules(r: _Reader, default: ScalingRules) -> ScalingRules:
    rules = ScalingRules(
        stabilization_window_seconds=r.integer_or(
            "stabilizationWindowSeconds", default.stabilization_window_seconds, low=0, high=3600
        ),
        max_step_percent=r.integer_or("maxStepPercent", default.max_step_percent, low=0, high=1000),
        max_step_pods=r.integer_or("maxStepPods", default.max_step_pods, low=0, high=1000),
        period_seconds=r.integer_or("periodSeconds", default.period_seconds, low=1, high=1800),
    )
    if rules.max_step_percent == 0 and rules.max_step_pods == 0:
        raise SpecError(
            f"{r.path}.maxStepPods",
            "maxStepPercent and maxStepPods are both 0: the pool could never scale this way",
        )
    return rules


def _parse_hung(r: _Reader, time_limit: int | None) -> HungWorkers:
    derived = DEFAULT_STUCK_SECONDS if time_limit is None else time_limit + STUCK_MARGIN_SECONDS
    return HungWorkers(
        action=r.choice("action", HUNG_ACTIONS, DEFAULT_HUNG_ACTION),
        unresponsive_cycles=r.integer_or(
            "unresponsiveCycles", DEFAULT_UNRESPONSIVE_CYCLES, low=1, high=100
        ),
        stuck_after_seconds=r.integer_or("stuckAfterSeconds", derived, low=1, high=7 * 86400),
        max_restarts=r.integer_or("maxRestarts", DEFAULT_MAX_RESTARTS, low=0, high=20),
        window_seconds=r.integer_or(
            "restartWindowSeconds", DEFAULT_RESTART_WINDOW_SECONDS, low=60, high=7 * 86400
        ),
        max_unavailable_percent=r.integer_or(
            "maxUnavailablePercent", DEFAULT_MAX_UNAVAILABLE_PERCENT, low=1, high=100
        ),
    )


def _parse_beat(r: _Reader) -> Beat:
    persistence = r.object("persistence")
    return Beat(
        enabled=r.boolean("enabled", default=True),
        scheduler=r.string("scheduler", default=""),
        persistence=persistence.choice("type", PERSISTENCE_TYPES, DEFAULT_BEAT_PERSISTENCE),
        storage_class_name=persistence.optional_string("storageClassName"),
        persistence_size=str(persistence.raw.get("size", DEFAULT_BEAT_PERSISTENCE_SIZE)),
        termination_grace_period_seconds=r.integer_or(
            "terminationGracePeriodSeconds", DEFAULT_BEAT_GRACE_SECONDS, low=1, high=3600
        ),
        placement=_parse_placement(r),
    )


def _parse_probes(r: _Reader) -> Probes:
    return Probes(
        enabled=r.boolean("enabled", default=True),
        startup_timeout_seconds=r.integer_or(
            "startupTimeoutSeconds", DEFAULT_STARTUP_TIMEOUT_SECONDS, low=2, high=3600
        ),
        broker_grace_seconds=r.integer_or(
            "brokerGraceSeconds", DEFAULT_BROKER_GRACE_SECONDS, low=0, high=3600
        ),
        worker_liveness=_parse_timing(r.object("workerLiveness"), DEFAULT_WORKER_LIVENESS),
        worker_readiness=_parse_timing(r.object("workerReadiness"), DEFAULT_WORKER_READINESS),
        beat_liveness=_parse_timing(r.object("beatLiveness"), DEFAULT_BEAT_LIVENESS),
    )


def _parse_timing(r: _Reader, default: ProbeTiming) -> ProbeTiming:
    timing = ProbeTiming(
        enabled=r.boolean("enabled", default=default.enabled),
        period_seconds=r.integer_or("periodSeconds", default.period_seconds, low=1, high=3600),
        timeout_seconds=r.integer_or("timeoutSeconds", default.timeout_seconds, low=1, high=3600),
        failure_threshold=r.integer_or(
            "failureThreshold", default.failure_threshold, low=1, high=100
        ),
    )
    if timing.timeout_seconds > timing.period_seconds:
        raise SpecError(
            f"{r.path}.timeoutSeconds",
            f"must not exceed periodSeconds ({timing.timeout_seconds} > {timing.period_seconds})",
        )
    return timing


def _parse_placement(r: _Reader) -> Placement:
    return Placement(
        resources=r.object("resources").raw,
        env=tuple(_named(e, "name") for e in r.objects("env")),
        env_from=tuple(e.raw for e in r.objects("envFrom")),
        node_selector=r.string_map("nodeSelector"),
        tolerations=tuple(t.raw for t in r.objects("tolerations")),
        affinity=r.object("affinity").raw or None,
        extra_args=r.strings("extraArgs", default=()),
        pod=_parse_pod(r.object("podTemplate")),
    )


def _parse_pod(r: _Reader) -> PodOverrides:
    return PodOverrides(
        labels=r.string_map("labels"),
        annotations=r.string_map("annotations"),
        security_context=r.object("securityContext").raw or None,
        container_security_context=r.object("containerSecurityContext").raw or None,
        service_account_name=r.optional_string("serviceAccountName"),
        automount_service_account_token=r.optional_boolean("automountServiceAccountToken"),
        priority_class_name=r.optional_string("priorityClassName"),
        host_network=r.optional_boolean("hostNetwork"),
        volumes=tuple(_named(v, "name") for v in r.objects("volumes")),
        volume_mounts=tuple(_named(v, "name", "mountPath") for v in r.objects("volumeMounts")),
    )


def _named(r: _Reader, *required: str) -> Mapping[str, Json]:
    for key in required:
        r.string(key, required=True, min_length=1)
    return r.raw


def _first(value: _T | None, fallback: _T | None) -> _T | None:
    return value if value is not None else fallback


def _merge_named(
    base: Sequence[Mapping[str, Json]], top: Sequence[Mapping[str, Json]]
) -> tuple[Mapping[str, Json], ...]:
    """Lists keyed by ``name`` (env, volumes): ``top`` replaces ``base`` items of the same name."""
    names = {item["name"] for item in top}
    return tuple(item for item in base if item["name"] not in names) + tuple(top)


class _Reader:
    """Reads typed fields out of one JSON object, naming ``path.field`` in every error."""

    def __init__(self, raw: Json, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise SpecError(path, f"must be an object, not {_kind(raw)}")
        self.raw: Mapping[str, Json] = raw
        self.path = path

    def _get(self, key: str, required: bool) -> Json:
        value = self.raw.get(key)
        if value is None and required:
            raise SpecError(f"{self.path}.{key}", "is required")
        return value

    def string(
        self,
        key: str,
        *,
        required: bool = False,
        default: str = "",
        min_length: int = 0,
        max_length: int | None = None,
        pattern: re.Pattern[str] | None = None,
    ) -> str:
        value = self._get(key, required)
        if value is None:
            return default
        where = f"{self.path}.{key}"
        if not isinstance(value, str):
            raise SpecError(where, f"must be a string, not {_kind(value)}")
        if len(value) < min_length:
            raise SpecError(where, "must not be empty")
        if max_length is not None and len(value) > max_length:
            raise SpecError(where, f"must be at most {max_length} characters")
        if pattern is not None and not pattern.match(value):
            raise SpecError(where, f"{value!r} does not match {pattern.pattern}")
        return value

    def optional_string(self, key: str) -> str | None:
        return self.string(key) if self.raw.get(key) is not None else None

    def choice(self, key: str, allowed: Sequence[str], default: str) -> str:
        value = self.string(key, default=default)
        if value not in allowed:
            raise SpecError(f"{self.path}.{key}", f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def integer(
        self,
        key: str,
        *,
        default: int | None = None,
        low: int | None = None,
        high: int | None = None,
    ) -> int | None:
        value = self._get(key, required=False)
        if value is None:
            return default
        where = f"{self.path}.{key}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(where, f"must be an integer, not {_kind(value)}")
        if low is not None and value < low:
            raise SpecError(where, f"must be ≥ {low} (got {value})")
        if high is not None and value > high:
            raise SpecError(where, f"must be ≤ {high} (got {value})")
        return value

    def integer_or(
        self, key: str, default: int, *, low: int | None = None, high: int | None = None
    ) -> int:
        """Like :meth:`integer`, with a default, so never None."""
        value = self.integer(key, low=low, high=high)
        return default if value is None else value

    def integers(
        self, key: str, *, default: tuple[int, ...], low: int, high: int
    ) -> tuple[int, ...]:
        value = self._get(key, required=False)
        if value is None:
            return default
        items = self._list(key, value)
        for index, item in enumerate(items):
            where = f"{self.path}.{key}[{index}]"
            if isinstance(item, bool) or not isinstance(item, int):
                raise SpecError(where, f"must be an integer, not {_kind(item)}")
            if not low <= item <= high:
                raise SpecError(where, f"must be between {low} and {high} (got {item})")
        return tuple(items)

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self.optional_boolean(key)
        return default if value is None else value

    def optional_boolean(self, key: str) -> bool | None:
        value = self._get(key, required=False)
        if value is not None and not isinstance(value, bool):
            raise SpecError(f"{self.path}.{key}", f"must be true or false, not {_kind(value)}")
        return value

    def strings(self, key: str, *, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, required=False)
        if value is None:
            return default
        items = self._list(key, value)
        for index, item in enumerate(items):
            if not isinstance(item, str):
                raise SpecError(
                    f"{self.path}.{key}[{index}]", f"must be a string, not {_kind(item)}"
                )
        return tuple(items)

    def string_map(self, key: str) -> Mapping[str, str]:
        value = self.object(key).raw
        for name, item in value.items():
            if not isinstance(item, str):
                raise SpecError(f"{self.path}.{key}.{name}", f"must be a string, not {_kind(item)}")
        return dict(value)

    def object(self, key: str, *, required: bool = False) -> _Reader:
        return _Reader(self._get(key, required), f"{self.path}.{key}")

    def objects(self, key: str, *, required: bool = False) -> list[_Reader]:
        value = self._get(key, required)
        if value is None:
            return []
        items = self._list(key, value)
        return [_Reader(item, f"{self.path}.{key}[{index}]") for index, item in enumerate(items)]

    def _list(self, key: str, value: Json) -> list[Json]:
        if not isinstance(value, list):
            raise SpecError(f"{self.path}.{key}", f"must be a list, not {_kind(value)}")
        return value


def _kind(value: Json) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
