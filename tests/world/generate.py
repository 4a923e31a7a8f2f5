"""Moved to :mod:`ui.demo.world` (the benchmarks and the demo use it too); this name stays for tests written
against it. New code imports ``ui.demo.world``."""

from ui.demo.world import *  # noqa: F401,F403
from ui.demo.world import __all__  # noqa: F401
