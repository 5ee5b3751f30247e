import time

import sisy
from extra.bench import marks


@sisy.periodic("* * * * * *", name="bench.tick", takes_context=True)
def tick(context) -> None:
    started = time.time()
    marks.record_tick(context.run.scheduled_for.timestamp(), started)
