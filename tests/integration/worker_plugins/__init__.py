"""Modules a test worker loads with ``--include`` (the directory goes on its ``PYTHONPATH``)."""
