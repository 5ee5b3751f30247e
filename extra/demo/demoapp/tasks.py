"""The demo's tasks, found by Sisy's autodiscovery like admin.py."""

import logging

import sisy

logger = logging.getLogger(__name__)


# Six fields: croniter reads the sixth (last) one as seconds, so this fires
# every 10 seconds.
@sisy.periodic("* * * * * */10")
def tick():
    logger.info("tick")
    return "tick"


@sisy.periodic("* * * * *")
def switched_off_in_settings():
    """Fires every minute in code, but SISY["TASKS"] in settings switches it off."""
    return "never"


@sisy.task
def greet(name: str) -> str:
    return f"Hello, {name}!"
