"""The ``context`` a ``takes_context=True`` task receives as its first argument."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sisy.conf import get_settings

if TYPE_CHECKING:
    from sisy.base import TaskDefinition
    from sisy.models import Run, Task

__all__ = ["TaskContext"]


class TaskContext:
    """What a running task can see and report.

    ``task`` is the standing ``Task`` row (``None`` for a one-shot),
    ``run`` the ``Run`` row (``None`` when the function is called inline),
    ``userdata`` the task's persisted dict (changes are saved when the run
    ends, or at once with :meth:`save_userdata`), ``attempt`` the attempt
    number starting at 1.
    """

    def __init__(self, definition: TaskDefinition | None, run: Run | None, task: Task | None):
        self.definition = definition
        self.run = run
        self.task = task
        self.userdata: dict[str, Any] = dict(task.userdata) if task is not None else {}
        self._userdata_seen = dict(self.userdata)
        self._last_progress = 0.0
        #: Whether a progress() call was folded into a later write that has not happened.
        self._progress_unsaved = False

    @classmethod
    def inline(cls, definition: TaskDefinition) -> TaskContext:
        """A context for a plain function call: no run, no task, progress is kept in memory."""
        return cls(definition, None, None)

    @property
    def attempt(self) -> int:
        return self.run.attempt if self.run is not None else 1

    def progress(self, done: int, total: int | None = None, note: str = "") -> None:
        """Record progress on the run; writes at most every ``SISY["PROGRESS_INTERVAL"]`` s.

        The final step (``done == total``) is always written.
        """
        if self.run is None:
            return
        self.run.progress_done, self.run.progress_total = done, total
        self.run.progress_note = str(note)[:255]
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - self._last_progress < get_settings().PROGRESS_INTERVAL:
            self._progress_unsaved = True
            return
        self._last_progress = now
        self._write_progress()

    def flush_progress(self) -> None:
        """Write the latest progress if the throttle skipped it; Sisy calls this when
        the run ends.

        Nothing is written when every :meth:`progress` call was written already
        or none was made: a task that reports no progress costs no query.
        """
        if self.run is not None and self._progress_unsaved:
            self._write_progress()

    def _write_progress(self) -> None:
        self._progress_unsaved = False
        type(self.run).objects.filter(pk=self.run.pk).update(
            progress_done=self.run.progress_done,
            progress_total=self.run.progress_total,
            progress_note=self.run.progress_note,
        )

    def save_userdata(self) -> None:
        """Persist ``userdata`` on the task row now (it is also saved when the run ends)."""
        if self.task is not None and self.userdata != self._userdata_seen:
            type(self.task).objects.filter(pk=self.task.pk).update(userdata=self.userdata)
            self.task.userdata = dict(self.userdata)
            self._userdata_seen = dict(self.userdata)
