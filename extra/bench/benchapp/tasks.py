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


@sisy.task(name="bench.trace", takes_context=True)
def trace(context, i: int) -> None:
    """``latency_bench``'s no-op: notes its start and when the worker began to execute it
    (``Run.started_at``, set right after the claim)."""
    from extra.bench import marks

    marks.record(i, extra=context.run.started_at.timestamp())
