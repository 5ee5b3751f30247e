"""W1–W4, W6 and W7, run the same way for every system in ``systems.py``.

All times come from ``time.time()`` on this machine: the producer notes when it
starts enqueueing (or enqueues one run), the task body notes when it starts
(``marks.record``), and the harness reads the marks from Redis.
"""

from __future__ import annotations

import time

from extra.bench import common, marks
from extra.bench.cpu import CpuMeter
from extra.bench.procs import Processes

STARTUP_TIMEOUT = 90.0


def wait_ready(system, processes: Processes) -> float:
    """Enqueue a probe and wait for its body to start; return the seconds it took."""
    marks.reset()
    began = time.monotonic()
    system.enqueue(-1)
    system.flush()
    while time.monotonic() - began < STARTUP_TIMEOUT:
        processes.check()
        if marks.pop(1.0) is not None:
            return time.monotonic() - began
    raise RuntimeError(f"{system.label}: no worker started the probe in {STARTUP_TIMEOUT:.0f} s")


def start_workers(system, count: int, idle: float) -> Processes:
    processes = Processes(system.key)
    try:
        for argv in system.worker_commands(count):
            processes.start(argv, system.env())
        wait_ready(system, processes)
        time.sleep(idle)  # every process past its start-up, and idle
        processes.check()
    except BaseException:
        processes.stop()
        raise
    return processes


def wait_done(system, processes: Processes, count: int) -> float:
    """Wait until ``count`` runs have started (and, where the system records it, finished);
    return the time of the last start or durable finish."""
    timeout = max(120.0, count / 20)
    deadline = time.monotonic() + timeout
    while not marks.wait_count(count, 1.0):
        processes.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{system.label}: {marks.count()} of {count} runs started "
                               f"in {timeout:.0f} s")
    last = max(started for _, started in marks.read())
    finished = system.finished_at(count, timeout)
    return max(last, finished or 0.0)


def throughput(system, processes: Processes, count: int) -> tuple[float, float, dict]:
    """W1/W6: enqueue ``count`` runs from sync code; (enqueue /s, end to end /s, CPU).

    End to end is from the first enqueue to the last body start, or to the last
    durable finish where the system records one (Sisy's ``Run.finished_at``).
    CPU is µs per run of the whole machine, of its database and Redis
    servers, of the producer and of the workers, from the first enqueue until
    the harness has seen every run done (see ``cpu.py``).
    """
    system.before_batch()
    marks.reset()
    meter = CpuMeter(processes.pids())
    meter.start()
    began = time.time()
    for i in range(count):
        system.enqueue(i)
    system.flush()
    enqueued = time.time()
    last = wait_done(system, processes, count)
    cpu = meter.per_run(count)
    return count / (enqueued - began), count / (last - began), cpu


def backlog(system, processes: Processes, count: int) -> float:
    """W7: ``count`` runs queued while the workers are frozen (SIGSTOP), then drained;
    runs per second from their release (SIGCONT) to the last start or durable finish.

    W1's end to end is the producer's pace wherever the worker keeps up; this is
    the worker's own, as after a burst or an outage.
    """
    system.before_batch()
    marks.reset()
    processes.pause()
    try:
        for i in range(count):
            system.enqueue(i)
        system.flush()
        time.sleep(0.5)  # let every message reach its broker
    finally:
        began = time.time()
        processes.resume()
    return count / (wait_done(system, processes, count) - began)


def latency(system, processes: Processes, count: int) -> list[float]:
    """W2: ``count`` sequential runs; seconds from before enqueue to body start."""
    system.before_batch()
    marks.reset()
    latencies = []
    for i in range(count):
        began = time.time()
        system.enqueue(i)
        mark = marks.pop(30.0)
        if mark is None:
            processes.check()
            raise RuntimeError(f"{system.label}: run {i} did not start in 30 s")
        latencies.append(mark[1] - began)
        time.sleep(0.01)  # let the worker finish the run before the next one
    return latencies


def schedule_lags(system, seconds: float, warmup: float = 3.0) -> tuple[list[float], int]:
    """W4: run the system's scheduler (and a worker) for ``seconds``; start − slot of each tick.

    Ticks whose slot falls in the first ``warmup`` seconds after the first
    tick are left out. Returns the lags and the number of slots expected.
    """
    system.before_batch()
    marks.reset()
    processes = Processes(system.key + "-beat")
    with processes:
        for argv in system.scheduler_commands():
            processes.start(argv, system.env(SISY_BENCH_PERIODIC="1"))
        first = None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while first is None and time.monotonic() < deadline:
            processes.check()
            ticks = system.ticks()
            first = ticks[0][0] if ticks else None
            time.sleep(0.2)
        if first is None:
            raise RuntimeError(f"{system.label}: no periodic run in {STARTUP_TIMEOUT:.0f} s")
        end = first + warmup + seconds
        while time.time() < end + 2.0:
            processes.check()
            time.sleep(0.5)
    window = [(slot, started) for slot, started in system.ticks()
              if first + warmup <= slot < end]
    return [started - slot for slot, started in window], int(seconds)


def measure(system, options) -> dict:
    """Every workload for one system; a dict of figures (seconds and MiB as measured)."""
    result: dict = {}
    system.setup()
    try:
        with start_workers(system, 1, options.idle) as processes:
            result["rss"] = processes.rss_mib()
            runs = [throughput(system, processes, options.tasks) for _ in range(options.repeat)]
            result["enqueue"] = common.median([r[0] for r in runs])
            result["e2e"] = common.median([r[1] for r in runs])
            for field in runs[0][2]:
                result[field] = common.median([r[2][field] for r in runs])
            result["drain"] = common.median([backlog(system, processes, options.tasks)
                                             for _ in range(options.repeat)])
            lat = latency(system, processes, options.latency)
            result["p50"] = common.median(lat) * 1000
            result["p95"] = common.percentile(lat, 0.95) * 1000
        if options.workers2:
            with start_workers(system, 2, options.idle) as processes:
                runs = [throughput(system, processes, options.tasks)
                        for _ in range(options.repeat)]
                result["e2e2"] = common.median([r[1] for r in runs])
        if options.schedule_seconds and system.has_scheduler:
            lags, expected = schedule_lags(system, options.schedule_seconds)
            result["lag_p50"] = common.median(lags) * 1000
            result["lag_p99"] = common.percentile(lags, 0.99) * 1000
            result["ticks"] = f"{len(lags)}/{expected}"
    finally:
        system.teardown()
        marks.reset()
    return result
