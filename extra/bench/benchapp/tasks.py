import sisy


@sisy.task(name="bench.noop")
def noop(i: int) -> None:
    return None
