"""Ctrl-C during training: the step in progress finishes, a checkpoint is written, then the run exits.

SIGINT only sets a flag (:class:`StopRequest`); the loop looks at it between steps, where every
piece of state is whole (a KeyboardInterrupt raised inside the optimiser's update would leave the
weights half-updated). A second Ctrl-C while the checkpoint is written interrupts at once. Only a
single-process run in the main thread takes the signal over: on several ranks each process would
see it after a different step, and their collectives would no longer pair up.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from remixmatch.common.errors import EXIT_INTERRUPTED

from .errors import TrainerError


class Interrupted(TrainerError, RuntimeError):
    """The run stopped on Ctrl-C after writing its checkpoint; the message says which."""

    exit_code = EXIT_INTERRUPTED


class StopRequest:
    requested = False


@contextlib.contextmanager
def stop_on_sigint(enabled: bool = True):
    """Yields a StopRequest whose ``requested`` turns true at the first SIGINT."""
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, frame):
        request.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C interrupts at once

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["Interrupted", "StopRequest", "stop_on_sigint"]
