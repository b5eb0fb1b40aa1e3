"""A small real Celery app for the operator's tests and demo: ``celery -A celery_demo worker``."""

from .celery import app

__all__ = ["app"]
