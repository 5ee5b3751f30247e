"""A Channels consumer so that ``manage.py runworker sisy.run_task`` runs Sisy tasks.

It shares the claim-then-execute path with ``sisy_worker``. Prefer
``sisy_worker``: ``runworker`` buffers messages without bound and dies on a
malformed one (see the "Running workers" docs).
"""

from __future__ import annotations

import threading

from channels.consumer import SyncConsumer

from sisy.conf import get_settings
from sisy.worker import Heartbeat, Worker, worker_name

__all__ = ["RunConsumer"]

_lock = threading.Lock()
_worker: Worker | None = None


def _shared_worker() -> Worker:
    global _worker
    with _lock:
        if _worker is None:
            conf = get_settings()
            # runworker stops without warning: each outcome is written before the next run.
            _worker = Worker([conf.RUN_TASK_CHANNEL], name=worker_name("runworker:"),
                             background_outcomes=False)
            Heartbeat(_worker.name, conf.RUN_TASK_CHANNEL, conf.WORKER_HEARTBEAT).start()
        return _worker


class RunConsumer(SyncConsumer):
    """Handles ``{"type": "sisy.run", "run": id, "name": name}`` messages."""

    def sisy_run(self, message):
        _shared_worker().handle_message(message)
