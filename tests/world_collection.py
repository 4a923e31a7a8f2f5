"""Moved to :mod:`ui.demo.collection`; this name stays for tests written against it. New code imports
``ui.demo.collection`` (or uses the ``world`` fixtures of ``tests/conftest.py``)."""

from ui.demo.collection import WorldCollection, build_world_collection  # noqa: F401
