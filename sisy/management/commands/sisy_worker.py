import signal

from django.core.management.base import BaseCommand, CommandError

from sisy.conf import get_settings
from sisy.worker import Worker


def install_stop_handlers(stop, *, label: str, logger) -> None:
    """SIGTERM/SIGINT ask ``stop`` to finish the current run; a second one exits at once."""

    def handler(signum, frame):
        if stop.is_set():
            raise SystemExit(128 + signum)
        logger.info("%s: %s received, finishing the current run (send it again to exit now).",
                    label, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class Command(BaseCommand):
    help = (
        "Run a Sisy worker: take wake-ups from Sisy's channel(s) one at a time and run "
        "the registered tasks they name. Needs no routing in the project. SIGTERM or "
        "SIGINT finishes the current run, then exits 0."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--channel", action="append", dest="channels",
            help="Channel to listen on (repeatable). Default: SISY['RUN_TASK_CHANNEL'].",
        )
        parser.add_argument(
            "--concurrency", type=int, default=1,
            help="Runs this process executes at once, each in a thread (default 1).",
        )
        parser.add_argument("--name", help="Worker name (default host:pid:random).")
        parser.add_argument("--layer", default="default", help="Channel layer alias.")

    def handle(self, *args, channels=None, concurrency=1, name=None, layer="default", **options):
        import logging

        if concurrency < 1:
            raise CommandError(f"--concurrency must be 1 or more, not {concurrency}.")
        for channel in channels or []:
            if not channel or "!" in channel:
                raise CommandError(
                    f"--channel {channel!r} is not a valid Sisy channel; use a plain name "
                    "such as sisy.run_task."
                )
        worker = Worker(channels or [get_settings().RUN_TASK_CHANNEL], name=name,
                        concurrency=concurrency, layer_alias=layer)
        install_stop_handlers(worker.stop_event, label=f"Worker {worker.name}",
                              logger=logging.getLogger("sisy.worker"))
        worker.run()
