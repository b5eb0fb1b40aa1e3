"""Cheap, trustworthy probes for Celery on Kubernetes.

A worker or beat started through ``celery-probe run`` (see :mod:`celery_probes.hooks`) keeps a
small state file up to date from inside its own main loop: a heartbeat, whether its broker
connection is up, which queues it consumes, whether it is shutting down, when beat last ticked.
The checks (``celery-probe worker-live`` and friends, :mod:`celery_probes.cli`) read that file and
decide (:mod:`celery_probes.state`), importing nothing but the standard library, and sending
nothing to the broker.

This module imports nothing: the checks run every few seconds in every pod.
"""
