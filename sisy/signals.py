"""Signals sent by Sisy's worker.

``run_started(sender=TaskDefinition, run=Run)`` is sent after a worker has
claimed a run and before it calls the function; ``run_finished(sender,
run, status)`` after the outcome is stored; for a failed run it is sent from
the ``except`` block that caught the error, so receivers can log it with
``logger.exception()`` or read ``sys.exc_info()``.
"""

from django.dispatch import Signal

__all__ = ["run_started", "run_finished"]

run_started = Signal()
run_finished = Signal()
