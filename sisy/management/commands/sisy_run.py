import logging
import threading

from django.core.management.base import BaseCommand, CommandError

from sisy.management.commands.sisy_worker import install_stop_handlers
from sisy.worker import Worker

logger = logging.getLogger("sisy.run")


class Command(BaseCommand):
    help = (
        "Run the Sisy scheduler and a worker in one process: the embedded default "
        "(SQLite + in-memory channel layer). Runs queued by other processes are found "
        "in the database within SISY['POLL_INTERVAL'] seconds."
    )

    def add_arguments(self, parser):
        parser.add_argument("--concurrency", type=int, default=1,
                            help="Runs executed at once, each in a thread (default 1).")
        parser.add_argument("--no-scheduler", action="store_true",
                            help="Run only the worker.")

    def handle(self, *args, concurrency=1, no_scheduler=False, **options):
        if concurrency < 1:
            raise CommandError(f"--concurrency must be 1 or more, not {concurrency}.")
        stop = threading.Event()
        install_stop_handlers(stop, label="sisy_run", logger=logger)
        scheduler_thread = None
        if not no_scheduler:
            from sisy.scheduler import Scheduler

            scheduler = Scheduler()
            scheduler_thread = threading.Thread(
                target=scheduler.run, args=(stop,), name="sisy-scheduler", daemon=True
            )
            scheduler_thread.start()
        worker = Worker(concurrency=concurrency)
        worker.run(stop)
        if scheduler_thread is not None:
            scheduler_thread.join(timeout=10)
