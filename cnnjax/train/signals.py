"""Stopping a run cleanly on SIGTERM / SIGINT (schedulers send SIGTERM before they kill).

:class:`StopRequest` only notes the request; the loop reads it after each step (the
``CheckStop`` action of :mod:`cnnjax.train.actions`), finishes that step, saves and returns.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["StopRequest"]


class StopRequest:
    """SIGTERM / SIGINT handler (a context manager): ask the loop to stop after the current step.

    A second SIGINT interrupts at once, except once :attr:`saving` is set (the final save):
    from then on signals only note the request, so the last checkpoint is always written.
    Outside the main thread (where Python allows no handlers) it installs nothing.
    """

    def __init__(self):
        self.requested = False
        self.saving = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT and not self.saving:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
