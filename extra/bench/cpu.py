"""CPU time spent on the machine during a batch, from ``/proc`` (Linux).

:class:`CpuMeter` reads the machine's busy time (``/proc/stat``: every
process, including those that exit during the batch, interrupts and the
kernel) and that of the PostgreSQL and Redis server processes
(``/proc/PID/stat`` of each process named ``postgres`` or ``redis-server``,
with the children it has reaped: a PostgreSQL backend that exits during the
batch counts in the postmaster) before and after a batch. Whatever else runs
on the machine during the batch is counted too; on an otherwise quiet machine
that is a few µs per run. It also reads the producer's (this process, which
enqueues and then waits for the runs) and the workers' (their process trees).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from extra.bench import common

SERVERS = {"postgres": "db", "redis-server": "redis"}
_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """Seconds of CPU the whole machine spent busy since boot (all cores)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / _TICK


def _process_seconds(pid) -> tuple[str, float]:
    """A process's name and seconds of CPU (user + system), with its reaped children's;
    ``("", 0.0)`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:  # gone since it was listed
        return "", 0.0
    fields = text[text.rindex(")") + 2:].split()
    return text[text.index("(") + 1:text.rindex(")")], sum(map(int, fields[11:15])) / _TICK


def server_seconds() -> dict[str, float]:
    """Seconds of CPU of the database and Redis servers' processes, with their reaped
    children's (a backend whose client left)."""
    seconds = dict.fromkeys(SERVERS.values(), 0.0)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        name, used = _process_seconds(pid)
        if name in SERVERS:
            seconds[SERVERS[name]] += used
    return seconds


def tree_seconds(pid: int) -> float:
    """Seconds of CPU of a process, its descendants and the children they have reaped."""
    return sum(_process_seconds(current)[1] for current in common.process_tree(pid))


class CpuMeter:
    """``start()`` before a batch, ``per_run(count)`` after it: µs of CPU per run.

    ``workers`` are the pids of the worker processes (each with its tree).
    """

    def __init__(self, workers: Iterable[int] = ()):
        self._workers = list(workers)

    def _read(self) -> tuple[float, dict[str, float], float, float]:
        return (machine_busy(), server_seconds(), time.process_time(),
                sum(tree_seconds(pid) for pid in self._workers))

    def start(self) -> None:
        self._before = self._read()

    def per_run(self, count: int) -> dict[str, float]:
        (busy, servers, producer, workers), before = self._read(), self._before
        result = {"cpu": (busy - before[0]) / count * 1e6}
        for role, seconds in servers.items():
            result[f"cpu_{role}"] = (seconds - before[1][role]) / count * 1e6
        result["cpu_producer"] = (producer - before[2]) / count * 1e6
        if self._workers:
            result["cpu_worker"] = (workers - before[3]) / count * 1e6
        return result
