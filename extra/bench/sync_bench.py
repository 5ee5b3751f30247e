"""Registry → Task rows: ``sync_tasks()`` with 1,000 registered periodic tasks.

    python -m extra.bench.sync_bench [--tasks 1000] [--mode pg|embedded]
"""

from __future__ import annotations

import argparse
import time
import types

from extra.bench import common


def _noop():
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--mode", choices=["pg", "embedded"], default="pg")
    args = parser.parse_args(argv)
    common.setup_django(args.mode)
    import sisy
    from sisy.models import Task
    from sisy.registry import registry
    from sisy.sync import sync_tasks

    Task.objects.filter(name__startswith="syncbench.").delete()
    rows = []
    with registry.isolated():
        for i in range(args.tasks):
            func = types.FunctionType(_noop.__code__, globals(), f"noop_{i}")
            func.__qualname__ = func.__name__  # a distinct module-level function per name
            sisy.periodic(f"{i % 60} * * * *", name=f"syncbench.task_{i:05d}")(func)
        for label in ("create", "unchanged"):
            started = time.perf_counter()
            sync_tasks()
            rows.append((label, f"{(time.perf_counter() - started) * 1000:.0f}"))
    started = time.perf_counter()
    sync_tasks()
    rows.append(("orphan", f"{(time.perf_counter() - started) * 1000:.0f}"))
    Task.objects.filter(name__startswith="syncbench.").delete()
    print(f"sync_tasks() with {args.tasks:,} periodic tasks ({args.mode})")
    print(common.table(("pass", "ms"), rows))


if __name__ == "__main__":
    main()
