"""The launcher's settings: how long a worker or beat may wait between two broker attempts."""

from __future__ import annotations

import pytest

from celery_probes import hooks


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        (None, 4.0),
        ("", 4.0),
        (" 2.5 ", 2.5),
        ("30", 30.0),
        ("0", None),  # kombu's own backoff, up to 30 s
        ("-1", None),
    ],
)
def test_the_reconnect_cap_comes_from_the_environment(
    raw: str | None, seconds: float | None
) -> None:
    environ = {} if raw is None else {hooks.RECONNECT_MAX_ENV: raw}
    assert hooks.reconnect_max_seconds(environ) == seconds


def test_a_cap_that_is_not_a_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="CELERY_PROBE_RECONNECT_MAX_SECONDS must be a number"):
        hooks.reconnect_max_seconds({hooks.RECONNECT_MAX_ENV: "soon"})
