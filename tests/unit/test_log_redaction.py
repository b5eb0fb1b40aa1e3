"""No log line leaves the operator with a URL's credentials, even from a library's traceback."""

from __future__ import annotations

import io
import logging

from celery_operator.handlers import RedactingFilter

URL = "redis://admin:hunter2%2Fx@broker.example:6390/9?ssl_ca_certs=/etc/ca.pem"


def test_messages_arguments_and_tracebacks_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("test.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("cannot connect to %s", URL)
        try:
            raise ConnectionError(f"Error connecting to {URL}")
        except ConnectionError:
            log.exception("poll failed")
        log.warning("nothing secret in %d lines", 3)
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "hunter2" not in text
    assert "admin" not in text
    assert "ca.pem" not in text
    assert "broker.example:6390" in text  # where it points stays readable
    assert "Traceback" in text  # the traceback is kept, redacted
    assert "nothing secret in 3 lines" in text  # other lines as they were
