import sisy


@sisy.task(name="bench.noop")
def noop(i: int) -> None:
    return None


@sisy.task(name="bench.noop_context", takes_context=True)
def noop_context(context, i: int) -> None:
    """``bench.noop`` with a context (``drain_bench --context``)."""
    return None


@sisy.task(name="bench.mark")
def mark(i: int) -> None:
    """The side-by-side benchmark's no-op: it notes its start in Redis, like the others."""
    from extra.bench import marks

    marks.record(i)

