"""The RBAC a user installs, on the real API server: the namespaced install (deploy/namespaced)
runs the operator with only its Role, and the aggregated ClusterRoles (deploy/rbac-aggregated.yaml)
give the built-in view, edit and admin roles the CeleryCluster API.

The namespaced install lives in the test's own namespace (nothing in it is cluster-scoped), so it
never meets the cluster-wide install of test_operator.py (namespace and ServiceAccount
``celery-operator``). The operator runs in this process with the install's ServiceAccount token,
as harness._run_operator runs it for every e2e test (the local cluster has no operator image to
run the Deployment); the Deployment is checked as rendered.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from celery_operator import GROUP, PLURAL, VERSION
from tests.e2e import rbac
from tests.e2e.conftest import _delete_namespace
from tests.e2e.harness import ROOT, Clusters, run_operator_as, use_every_verb
from tests.e2e.kube import wait_for

NAMESPACED = ROOT / "deploy" / "namespaced"
AGGREGATED = ROOT / "deploy" / "rbac-aggregated.yaml"
PLACEHOLDER = "celery-apps"  # deploy/namespaced/kustomization.yaml's `namespace:`
SERVICE_ACCOUNT = "celery-operator"
NAMESPACED_KINDS = [
    "ServiceAccount", "Role", "Role", "RoleBinding", "RoleBinding", "Service", "Deployment",
]  # fmt: skip
LEADER_ELECTION = "celery-operator-leader-election"  # deploy/operator/leader-election.yaml
CLUSTER_SCOPED = {"namespaces", "customresourcedefinitions"}

# What Kopf 1.45 logs when it tries to discover namespaces it may not list: it retries the 403
# for about a minute (kopf/_cogs/clients/api.py, networking.error_backoffs: 9 attempts over 54 s)
# and serves nothing meanwhile, then falls back (kopf/_core/reactor/observation.py). The operator
# turns Kopf's discovery off when every namespace is named outright (handlers.start), so none of
# this may appear: any 403 at all is a permission the Role lacks.
KOPF_NAMESPACE_FALLBACK = "Not enough permissions to list namespaces. Falling back"


@pytest.fixture
def namespaced_install(namespace: str, kubeconfig: str, tmp_path: Path) -> list[dict[str, Any]]:
    """deploy/namespaced rendered for the test's namespace, its ServiceAccount, Role and
    RoleBinding applied (the namespace fixture removes them with the namespace)."""
    rendered = rbac.kustomize_in_namespace(NAMESPACED, namespace, tmp_path / "overlay")
    rbac.kubectl_apply(kubeconfig, rbac.pick(rendered, "ServiceAccount", "Role", "RoleBinding"))
    return rendered


@pytest.fixture
def namespaced_kubeconfig(
    namespaced_install: list[dict[str, Any]],
    api_client: client.ApiClient,
    kubeconfig: str,
    namespace: str,
    tmp_path: Path,
) -> Path:
    return rbac.service_account_kubeconfig(
        api_client, kubeconfig, namespace, SERVICE_ACCOUNT, tmp_path / "sa.kubeconfig"
    )


def test_the_namespaced_overlay_renders_one_namespace_and_nothing_cluster_wide(
    tmp_path: Path,
) -> None:
    rendered = rbac.kustomize_in_namespace(NAMESPACED, "team-a", tmp_path / "overlay")
    assert [d["kind"] for d in rendered] == NAMESPACED_KINDS
    assert {d["metadata"]["namespace"] for d in rendered} == {"team-a"}
    assert PLACEHOLDER not in str(rendered), "the namespace is named in more than one place"
    for name in ("celery-operator", LEADER_ELECTION):
        binding = rbac.named(rendered, "RoleBinding", name)
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": "team-a"}
        ]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name,
        }  # fmt: skip
    pod = rbac.named(rendered, "Deployment", "celery-operator")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    container = pod["containers"][0]
    assert "--all-namespaces" not in container["command"]
    assert "--namespace=$(POD_NAMESPACE)" in container["command"]
    assert "--leader-elect" in container["command"]
    assert {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    } in container["env"]

    # The Role is the cluster-wide ClusterRole, rule for rule, less what only a ClusterRole can
    # grant: the two installs cannot drift apart.
    cluster_wide = rbac.kustomize(ROOT / "deploy")
    cluster_role = rbac.named(cluster_wide, "ClusterRole", "celery-operator")
    role = rbac.named(rendered, "Role", "celery-operator")
    assert role["rules"] == [
        r for r in cluster_role["rules"] if not set(r["resources"]) & CLUSTER_SCOPED
    ]
    # The Lease: one Role, the same in both installs, in the operator's own namespace.
    lease_role = rbac.named(rendered, "Role", LEADER_ELECTION)
    assert rbac.named(cluster_wide, "Role", LEADER_ELECTION)["rules"] == lease_role["rules"]
    assert rbac.named(cluster_wide, "Role", LEADER_ELECTION)["metadata"]["namespace"] == (
        "celery-operator"
    )
    assert {r["resources"][0] for r in lease_role["rules"]} == {"leases"}


def test_the_operator_runs_with_only_the_namespaced_role(
    crd: None,
    namespaced_kubeconfig: Path,
    kubeconfig: str,
    namespace: str,
    liveness_port: int,
    clusters: Clusters,
    sample_spec: Callable[..., dict[str, Any]],
) -> None:
    with run_operator_as(namespaced_kubeconfig, kubeconfig, namespace, liveness_port) as runner:
        use_every_verb(clusters, sample_spec)

    refused = rbac.refusals(runner.output, None)
    assert not refused, "\n".join(refused)
    # Kopf served the namespace as it was named, without trying to list namespaces first.
    assert KOPF_NAMESPACE_FALLBACK not in runner.output


def test_the_namespaced_service_account_reads_no_secret_outside_its_namespace(
    namespaced_kubeconfig: Path,
    clusters: Clusters,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    clusters.put_secret("broker", {"url": "redis://127.0.0.1:1/0"})
    other = f"e2e-rbac-other-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        core.create_namespaced_secret(
            other,
            client.V1Secret(metadata=client.V1ObjectMeta(name="broker"), string_data={"url": "x"}),
        )
        scoped: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(namespaced_kubeconfig)
        )
        with scoped:
            as_operator = client.CoreV1Api(scoped)
            assert as_operator.read_namespaced_secret("broker", namespace).data
            refused: list[tuple[str, Callable[[], object]]] = [
                ("the Secret of another namespace",
                 lambda: as_operator.read_namespaced_secret("broker", other)),
                ("a listing of its own Secrets (get only)",
                 lambda: as_operator.list_namespaced_secret(namespace)),
                ("every namespace's Secrets", as_operator.list_secret_for_all_namespaces),
                ("every namespace's CeleryClusters",
                 lambda: client.CustomObjectsApi(scoped).list_cluster_custom_object(
                     GROUP, VERSION, PLURAL)),
            ]  # fmt: skip
            for what, call in refused:
                with pytest.raises(client.ApiException) as raised:
                    call()
                assert raised.value.status == 403, what
    finally:
        _delete_namespace(core, other)


@pytest.fixture
def aggregated_roles(api_client: client.ApiClient, kubeconfig: str) -> Iterator[None]:
    """deploy/rbac-aggregated.yaml applied as an admin would; afterwards the roles this test
    created are deleted again (ones already installed stay, as this checkout has them)."""
    roles = rbac.manifests(AGGREGATED)
    rbac_api = client.RbacAuthorizationV1Api(api_client)
    created = []
    for role in roles:
        try:
            rbac_api.read_cluster_role(role["metadata"]["name"])
        except client.ApiException as error:
            if error.status != 404:
                raise
            created.append(role)
    rbac.kubectl_apply(kubeconfig, roles)
    yield
    rbac.kubectl_delete(kubeconfig, created)


def test_the_aggregated_roles_extend_view_edit_and_admin(
    aggregated_roles: None, api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    rbac_api = client.RbacAuthorizationV1Api(api_client)
    users = {role: f"e2e-{role}-{uuid.uuid4().hex[:6]}" for role in ("view", "edit", "admin")}
    for role, user in users.items():
        rbac_api.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name=f"e2e-{role}"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
                ),
                subjects=[
                    client.RbacV1Subject(
                        api_group="rbac.authorization.k8s.io", kind="User", name=user
                    )
                ],
            ),
        )

    def may(role: str, verb: str, subresource: str | None = None, where: str = namespace) -> bool:
        return rbac.allowed(
            api_client, users[role], verb, PLURAL, where, GROUP, subresource=subresource
        )

    # The clusterrole-aggregation controller folds the new rules in within moments.
    wait_for(
        lambda: may("view", "list") and may("edit", "create") and may("admin", "create"),
        timeout=60,
        message="the aggregated rules never reached view, edit and admin",
    )
    for role in ("view", "edit", "admin"):
        for verb in ("get", "list", "watch"):
            assert may(role, verb), (role, verb)
            assert may(role, verb, "status"), (role, verb, "status")
        assert not may(role, "get", where="default"), role  # a RoleBinding: its namespace only
        assert not may(role, "patch", "status"), role  # only the operator writes status
    for verb in ("create", "update", "patch", "delete", "deletecollection"):
        assert not may("view", verb), verb
        assert may("edit", verb), verb
        assert may("admin", verb), verb

    # Who may apply deploy/namespaced: the API server lets nobody grant what they lack, and the
    # built-in admin role, with these roles folded in, lacks only the status write (as the
    # overlay's comment says).
    rendered = rbac.kustomize_in_namespace(NAMESPACED, namespace, tmp_path / "overlay")
    lacking = [
        (group or "core", resource, verb)
        for role_name in ("celery-operator", LEADER_ELECTION)
        for rule in rbac.named(rendered, "Role", role_name)["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if not rbac.allowed(
            api_client,
            users["admin"],
            verb,
            resource.partition("/")[0],
            namespace,
            group,
            subresource=resource.partition("/")[2] or None,
        )
    ]
    assert lacking == [(GROUP, f"{PLURAL}/status", "patch")]
