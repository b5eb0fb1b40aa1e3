from __future__ import annotations

import socket
from typing import Any

import pytest

from celery_operator.__main__ import election_timings, identity, parse_args
from celery_operator.settings import Settings, from_env


@pytest.mark.parametrize(
    ("namespaces", "exact"),
    [
        pytest.param((), False, id="cluster-wide"),
        pytest.param(("shop",), True, id="one-name"),
        pytest.param(("shop", "billing-2"), True, id="names"),
        pytest.param(("team-*",), False, id="glob"),
        pytest.param(("shop", "!kube-system"), False, id="negation"),
        pytest.param(("Shop",), False, id="not-a-namespace-name"),
    ],
)
def test_only_namespaces_named_outright_need_no_discovery(
    namespaces: tuple[str, ...], exact: bool
) -> None:
    assert Settings(namespaces=namespaces).exact_namespaces is exact


def test_namespaces_come_from_the_environment_comma_separated() -> None:
    settings = from_env({"CELERY_OPERATOR_NAMESPACES": "shop,billing"})
    assert settings.namespaces == ("shop", "billing")
    assert settings.exact_namespaces


def test_the_lease_namespace_defaults_to_the_pods_own() -> None:
    assert from_env({"POD_NAMESPACE": "ops"}).lease_namespace == "ops"
    given = {"POD_NAMESPACE": "ops", "CELERY_OPERATOR_LEASE_NAMESPACE": "elsewhere"}
    assert from_env(given).lease_namespace == "elsewhere"
    assert from_env({}).lease_namespace == ""


def test_leader_election_is_off_unless_asked_for() -> None:
    assert not Settings().leader_elect
    assert from_env({"CELERY_OPERATOR_LEADER_ELECT": "1"}).leader_elect
    settings = parse_args(["--leader-elect", "--lease-name", "ops-lease"], from_env({}))
    assert (settings.leader_elect, settings.lease_name) == (True, "ops-lease")
    assert parse_args(["--lease-namespace", "ops"], Settings()).lease_namespace == "ops"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({}, "needs --lease-namespace or \\$POD_NAMESPACE", id="no-namespace"),
        pytest.param(
            {"lease_namespace": "ops", "renew_deadline_seconds": 12.0},
            "leader election: the lease duration",
            id="deadline-past-the-lease",
        ),
    ],
)
def test_leader_election_refuses_what_it_cannot_run_safely(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        election_timings(Settings(leader_elect=True, **changes))


def test_the_default_timings_hold_and_leave_the_holder_time_to_stop() -> None:
    timings = election_timings(Settings(leader_elect=True, lease_namespace="ops"))
    assert (timings.lease_duration, timings.renew_deadline, timings.retry_period) == (10, 7, 2)
    # A standby that saw the last renewal takes over at most lease + retry later: within 15 s.
    assert timings.lease_duration + timings.retry_period <= 15


def test_each_run_is_a_new_candidate_named_after_its_pod() -> None:
    first, second = identity({"POD_NAME": "celery-operator-7d9f-abcde"}), identity({})
    assert first.startswith("celery-operator-7d9f-abcde_")
    assert first != identity({"POD_NAME": "celery-operator-7d9f-abcde"})
    assert second.rsplit("_", 1)[0] == socket.gethostname()
