"""The Celery application object, configured from the process environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

from celery import Celery

from .config import settings_from_env


def create_app(environ: Mapping[str, str]) -> Celery:
    """A demo app configured from ``environ``; its tasks are imported when a worker starts."""
    app = Celery("celery_demo", include=["celery_demo.tasks"])
    app.config_from_object(settings_from_env(environ))
    return app


app = create_app(os.environ)
