from __future__ import annotations

import pytest

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
