import logging
import signal
import threading

from django.core.management.base import BaseCommand

from sisy.scheduler import Scheduler

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Run the Sisy scheduler: fire due standing tasks exactly once (several may run at "
        "once), send lost wake-ups again and settle runs of lost workers. Stops on SIGTERM/SIGINT."
    )

    def add_arguments(self, parser):
        parser.add_argument("--database", default="default", help="Database alias to use.")
        parser.add_argument(
            "--max-sleep", type=float, default=None,
            help="Longest sleep between two ticks, in seconds "
                 "(default: SISY['HEARTBEAT_FREQUENCY']).",
        )

    def handle(self, *args, **options):
        scheduler = Scheduler(max_sleep=options["max_sleep"], using=options["database"])
        stop = threading.Event()

        def request_stop(signum, frame):
            logger.info("Sisy scheduler got signal %s; stopping.", signum)
            scheduler.stop(stop)

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        scheduler.run(stop)
